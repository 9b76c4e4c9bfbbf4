"""``pmp``: single-stage segmentation from points, trained from scratch (PMP, papers/pmp-single-stage-points.txt).

Every step makes the batch's pseudo-masks on the fly, without gradient:

1. the network's softmax output, refined by the PAC refiner (``use_refiner``; :class:`weakseg.pseudo.PACRefiner`);
2. times the expanded distance fields of the crop's points (``use_fields``): per class present, the proximity to
   its points, objects times the inverted background field, plus the expansion scores, clipped to [0, 1];
3. thresholded at ``threshold`` (0.75): the arg-max class where its score reaches it, ignored elsewhere;
4. superimposed with the point blots (``use_blots``; computed once per image and cached) and the points.

The loss is the cross-entropy on those pseudo-masks (ignored pixels skipped). The expansion scores are updated at
the end of every epoch (every ``num_images`` images seen) from the epoch's accumulated loss, and kept in checkpoints.
The ``pmp-points`` recipe trains from random weights with group norm + weight standardisation
(``model.pretrained=false``, ``model.norm=group_ws``), as the paper does; ``pmp-pretrained-points`` keeps the
ImageNet backbone and its batch norms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weakseg import distributed
from weakseg.data.classes import ClassSet
from weakseg.data.dataset import DataConfig
from weakseg.data.rasterize import rasterize_points
from weakseg.data.sample import Sample
from weakseg.errors import ConfigError, TrainingError
from weakseg.losses import PartialCrossEntropy
from weakseg.methods.base import Method, register_method
from weakseg.pseudo.cache import SampleMapCache, digest
from weakseg.pseudo.distance_fields import ExpansionScore, aggregate_fields, expand_fields, proximity_fields
from weakseg.pseudo.pac import PACRefiner
from weakseg.pseudo.point_blots import PointBlotConfig, point_blots
from weakseg.utils import stable_int


@dataclass
class PMPArgs:
    threshold: float = 0.75  # pseudo-mask threshold on refined output ⊙ fields
    lower: float = -0.025  # ω, the expansion score's lower limit per epoch
    upper: float = 0.025  # η, its upper limit
    object_rate: float = 2.0  # objects expand this many times faster than the background
    use_refiner: bool = True
    use_fields: bool = True
    use_blots: bool = True
    blots: PointBlotConfig = field(default_factory=PointBlotConfig)
    blot_cache: str | None = None  # folder of cached point blots; None: <output_dir>/blots


def _blots_of(cfg: PointBlotConfig, sample: Sample) -> np.ndarray:
    """The sample's point blots, seeded by its image id."""
    if sample.points is None:
        raise TrainingError(f"pmp: image '{sample.image_id}' has no points")
    return point_blots(sample.image, sample.points, cfg, seed=stable_int(sample.image_id))


def _points_key(sample: Sample) -> str:
    """Cached blots are valid for these points only."""
    return digest(sample.points)


@register_method
class PMP(Method):
    """Cross-entropy on pseudo-masks from points: PAC-refined output ⊙ expanding distance fields, plus point blots."""

    name = "pmp"
    supervisions = ("points",)
    Args = PMPArgs

    def __init__(self, args: PMPArgs, supervision: str, class_set: ClassSet) -> None:
        super().__init__(args, supervision, class_set)
        if not 0.0 < args.threshold <= 1.0 or args.lower > args.upper:
            raise ConfigError("method_args: threshold must lie in (0, 1] and lower <= upper")
        args.blots.check()
        self.refiner = PACRefiner()
        self.score = ExpansionScore(args.lower, args.upper, args.object_rate)
        self.criterion = PartialCrossEntropy(class_set.ignore_index)
        self.objects = [c for c in range(class_set.num_classes) if c != class_set.background]
        self.blot_cache: SampleMapCache | None = None
        self.num_images, self.seen = 1, 0
        self.epoch_loss: torch.Tensor | float = 0.0  # the epoch's summed loss, kept on the device

    def bind(self, data: DataConfig, output_dir: Path, num_images: int) -> None:
        self.num_images = max(1, num_images)
        if self.args.use_blots:
            folder = Path(self.args.blot_cache) if self.args.blot_cache else output_dir / "blots"
            self.blot_cache = SampleMapCache(
                folder, {"blots": vars(self.args.blots)}, "blots", partial(_blots_of, self.args.blots),
                scope=str(Path(data.root).resolve()), key=_points_key,
            )  # fmt: skip

    def prepare_sample(self, sample: Sample) -> Sample:
        if not self.args.use_blots:
            return sample
        if self.blot_cache is None:
            raise TrainingError("pmp: the point-blot cache is not set up (Method.bind was not called)")
        return self.blot_cache(sample)

    def state_dict(self) -> dict:
        return {"score": self.score.state_dict(), "seen": self.seen, "epoch_loss": float(self.epoch_loss)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.score.load_state_dict(state["score"])
            self.seen, self.epoch_loss = state["seen"], state["epoch_loss"]

    @torch.no_grad()
    def pseudo_masks(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """``B×H×W`` targets at the crop's size (255 = ignore), from the logits at any stride (steps 1–4 above)."""
        ignore = self.class_set.ignore_index
        _, k, h, w = logits.shape
        height, width = batch["image"].shape[-2:]
        scores = logits.float().softmax(1)
        if self.args.use_refiner:
            scores = self.refiner(scores, batch["image"])
        if self.args.use_fields:
            scores = scores * self.fields(batch["points"], k, h, w, height, width).to(scores.device)
        confidence, labels = scores.max(1)
        labels = labels.masked_fill(confidence < self.args.threshold, ignore)
        target = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest")[:, 0].long()
        if self.args.use_blots:
            target = torch.where(batch["blots"] == ignore, target, batch["blots"])
        points = rasterize_points(batch["points"], height, width, 0, target.device)
        return torch.where(points == ignore, target, points)

    def fields(self, points: list[torch.Tensor], k: int, h: int, w: int, height: int, width: int) -> torch.Tensor:
        """``B×K×h×w`` expanded distance fields of each crop's points on the logits' grid (0 for absent classes)."""
        out = torch.zeros(len(points), k, h, w)
        bg = self.class_set.background
        for i, pts in enumerate(points):
            scaled = pts.clone().float()
            scaled[:, 0] = (scaled[:, 0] + 0.5) * w / width - 0.5
            scaled[:, 1] = (scaled[:, 1] + 0.5) * h / height - 0.5
            fields = proximity_fields(scaled, h, w, self.objects + ([bg] if bg is not None else []))
            objects = fields[: len(self.objects)]
            background = fields[-1] if bg is not None else torch.zeros(h, w)
            objects, background = expand_fields(
                aggregate_fields(objects, background), background, self.score.objects, self.score.background
            )
            out[i, self.objects] = objects
            if bg is not None:
                has_background = bool((pts[:, 2].long() == bg).any())
                out[i, bg] = background if has_background else 0.0
        return out

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        target = self.pseudo_masks(outputs["logits"], batch)
        loss = self.criterion(outputs["logits"], target)
        self.epoch_loss = self.epoch_loss + loss.detach().float()  # on the device: no host sync per step
        self.seen += target.shape[0] * distributed.world_size()  # images of the global batch
        if self.seen >= self.num_images:  # an epoch ended: expand (or shrink) the fields
            epoch_loss = distributed.all_reduce(torch.as_tensor(self.epoch_loss).clone(), "mean")
            self.score.update(float(epoch_loss))
            self.seen, self.epoch_loss = 0, 0.0
        labelled = (target != self.class_set.ignore_index).float().mean()
        return loss, {"ce": loss.detach(), "labelled": labelled, "expansion": torch.tensor(self.score.objects)}
