"""``full``: cross-entropy on full masks (the upper bound); ``pce``: partial cross-entropy on points/scribbles."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weakseg.data.classes import IGNORE_INDEX
from weakseg.data.rasterize import dilate_labels, rasterize_points
from weakseg.losses import PartialCrossEntropy
from weakseg.methods.base import Method, register_method


@register_method
class FullSupervision(Method):
    name = "full"
    supervisions = ("full",)

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.criterion = PartialCrossEntropy(self.class_set.ignore_index)

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.criterion(outputs["logits"], batch["mask"])
        return loss, {"ce": loss.detach()}


@dataclass
class PartialCEArgs:
    point_radius: int = 0  # dilate each point into a disk of this radius (pixels of the training crop)
    scribble_radius: int = 0  # grow scribbles by this many pixels


@register_method
class PartialCE(Method):
    """Partial cross-entropy over the pixels that points and scribbles label (Tang et al., CVPR'18, eq. 1)."""

    name = "pce"
    supervisions = ("points", "scribbles", "mixed")
    Args = PartialCEArgs

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.criterion = PartialCrossEntropy(self.class_set.ignore_index)

    def mixed_kinds(self) -> tuple[str, ...]:
        return ("points", "scribbles")

    def sparse_target(self, batch: dict) -> torch.Tensor:
        args = self.args
        return sparse_target(
            batch, self.label_kinds(), args.point_radius, args.scribble_radius, self.class_set.ignore_index
        )

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.criterion(outputs["logits"], self.sparse_target(batch))
        return loss, {"pce": loss.detach()}


def sparse_target(
    batch: dict, kinds: tuple[str, ...], point_radius: int, scribble_radius: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``B×H×W`` labels of a batch's points and scribbles: scribbles (grown by ``scribble_radius``) where present,
    then points (disks of ``point_radius``) where ``kinds`` holds them; ``ignore_index`` elsewhere."""
    scribble = batch["scribble"]
    target = dilate_labels(scribble, scribble_radius, ignore_index)
    if "points" in kinds:
        h, w = scribble.shape[-2:]
        points = rasterize_points(batch["points"], h, w, point_radius, scribble.device)
        target = torch.where(target == ignore_index, points, target)
    return target
