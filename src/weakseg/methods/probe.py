"""``probe``: a linear CAM classifier on the frozen ImageNet backbone, the CAM learner that keeps what the backbone
already knows (a linear probe, as in self-supervised evaluation, used for CAMs).

Stage ``cam`` (a :class:`~weakseg.methods.stages.Fit` stage, run by ``weakseg.engine.probe``): every training image
is seen at ``scales`` (and mirrored), the backbone's last features go through its own ImageNet pre-pooling layers
(the ``pretrained`` neck of :class:`~weakseg.methods.cam.CAMLearner`) and are average-pooled; these pooled features are
computed once and cached. The 1×1 CAM classifier, without bias, is then fitted on them with the multilabel soft
margin on the image's classes (HFPL eq. 17, the CAM learner's loss, with every view an example) plus ``l2``·‖W‖²,
by full-batch L-BFGS. As the classifier is linear, pooling the features and then classifying is the same as
classifying every pixel and then pooling, so the fitted head gives the CAMs of the pixels. Stages ``pseudo`` and
``seg`` are the CAM pipeline's. The whole stage takes seconds once the features are cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.errors import ConfigError
from weakseg.methods.base import register_method
from weakseg.methods.cam import SEGMENTATION_ON_LABELS, CAMLearner, cam_pipeline
from weakseg.methods.stages import Fit, Stage, Train
from weakseg.models.segmentor import SegmentationModel


@dataclass
class ProbeArgs:
    neck: str = "pretrained"  # the backbone's own pre-pooling layers (CAMArgs.neck); the probe needs them
    # the views of each training image; the pseudo-labels' 1.5 view would cost 2.25× the full-size one
    # (`weakseg bench ablate probe` compares them)
    scales: tuple[float, ...] = (1.0, 0.5)
    flip: bool = True  # each scale mirrored too
    l2: float = 0.0  # weight of ‖W‖² beside the mean soft margin (`weakseg bench ablate probe` tries 1e-4)
    iterations: int = 500  # L-BFGS iterations at most
    feature_cache: str | None = None  # folder of cached pooled features; None: <output_dir>/features


@register_method
class Probe(CAMLearner):
    """The CAM learner's head fitted on the frozen backbone's pooled features (no gradient steps)."""

    name = "probe"
    Args = ProbeArgs

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        args = self.args
        if args.neck != "pretrained":
            raise ConfigError("method_args.neck: the probe reads the backbone's own pre-pooling layers ('pretrained')")
        if not args.scales or min(args.scales) <= 0 or args.l2 < 0 or args.iterations < 1:
            raise ConfigError("method_args: scales must be positive, l2 >= 0 and iterations >= 1")

    @classmethod
    def plan(cls, supervision: str, args: ProbeArgs) -> list[Stage]:
        return cam_pipeline(Fit("cam"), Train("seg", SEGMENTATION_ON_LABELS, labels_from="pseudo"))

    @torch.no_grad()
    def view_features(self, model: SegmentationModel, image: Tensor) -> Tensor:
        """``V×C`` pooled features of a normalised ``1×3×H×W`` image at each scale and mirror (the neck's output,
        average-pooled over the whole view)."""
        height, width = image.shape[-2:]
        neck = model.heads["cam"].neck
        pooled = []
        for scale in self.args.scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            view = image if size == (height, width) else F.interpolate(image, size, mode="bilinear")
            views = torch.cat([view, view.flip(-1)]) if self.args.flip else view  # one batch of both
            pooled.append(neck(model.backbone(views)[-1]).float().mean((2, 3)))
        return torch.cat(pooled)

    def fit_head(self, model: SegmentationModel, features: Tensor, classes: Tensor) -> dict:
        """Fit the CAM classifier on ``N×V×C`` pooled features and the images' ``N×K`` 0/1 classes (every view of an
        image an example of its classes); the background row stays 0. Returns the final loss and iterations."""
        x = features.reshape(-1, features.shape[-1]).double()
        y = classes[:, self.foreground].repeat_interleave(features.shape[1], dim=0).double()
        weight = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight], max_iter=self.args.iterations, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip

        def objective() -> Tensor:
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ weight.T, y) + self.args.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(objective)
        head = model.heads["cam"].classifier.weight
        with torch.no_grad():
            head.zero_()
            head[self.foreground] = weight.to(head.dtype)[:, :, None, None]
            loss = F.binary_cross_entropy_with_logits(x @ weight.T, y)
        return {"soft_margin": float(loss), "iterations": int(optimizer.state[weight]["n_iter"])}
