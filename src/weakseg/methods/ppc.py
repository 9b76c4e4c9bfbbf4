"""``ppc``: pixel-to-prototype contrast (Du et al., papers/ppc-pixel-to-prototype-contrast.txt) added to any CAM
learner of the registry (``method_args.base``: ``seam`` as in the paper, ``cam`` or ``hfpl``).

The base learner's heads, second view (a single-view base gets PPC's own, the crop resized to ``view_size``²) and
loss are kept; PPC adds a projector (1×1 conv to ``dim`` + ReLU, L2-normalised) on the features the CAM classifier
reads, and ``α·L_cross + β·L_intra`` between the two views on the second view's grid. The stages (cam → pseudo →
seg) and the pseudo-labels are the base's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.config import from_dict
from weakseg.data.classes import ClassSet
from weakseg.errors import ConfigError
from weakseg.losses import PixelPrototypeContrastLoss
from weakseg.methods.base import METHODS, Method, learners, register_method
from weakseg.methods.cam import TARGET_VIEW, CAMLearner, rescaled_view
from weakseg.methods.stages import Stage
from weakseg.models.heads import ProjectionHead
from weakseg.models.segmentor import ModelConfig, SegmentationModel

PROJECTION = "projection"


@dataclass
class PPCArgs:
    base: str = "seam"  # the CAM learner PPC is added to
    base_args: dict = field(default_factory=dict)  # its method_args
    view_size: int = 128  # second view (given to a two-view base as its own view_size unless base_args sets it)
    dim: int = 128  # projected embedding size
    alpha: float = 0.1  # weight of L_cross (eq. 1)
    beta: float = 0.1  # weight of L_intra (eq. 1)
    temperature: float = 0.1  # τ (eq. 4)
    top_k: int = 32  # pixels per class and batch behind each prototype (eq. 5; table 6)
    background: float = 0.2  # constant background score of the pseudo-labels (reference code)
    cross_prototype: bool = True  # L^cp (eq. 6)
    cross_cam: bool = True  # L^cc (eq. 7)
    intra: bool = True  # L^intra (eq. 9)
    mining: tuple[int, int] | None = (3, 10)  # semi-hard prototype mining: drop the 3 most similar, keep the next 10
    sampling: bool = True  # hard pixel sampling: a random 50% + the 10%–60% least similar pixels of each class
    # "reference": the authors' code's objective (every class a prototype, min-max CAMs, …); "present": prototypes of
    # the classes with pixels only (weakseg's first reading; docs/ppc.md)
    objective: str = "reference"


@register_method
class PPC(Method):
    """A CAM learner plus the pixel-to-prototype contrast ``α·(L^cp + L^cc) + β·L^intra`` (PPC eqs. 1, 6–9)."""

    name = "ppc"
    supervisions = CAMLearner.supervisions
    Args = PPCArgs
    output = "cam"

    def __init__(self, args: PPCArgs, supervision: str, class_set: ClassSet) -> None:
        super().__init__(args, supervision, class_set)
        bases = [name for name in learners("cam") if name != self.name and METHODS[name].trains_by_steps(supervision)]
        if args.base not in bases:
            raise ConfigError(f"method_args.base must be a CAM learner ({', '.join(bases)}), not {args.base!r}")
        base_cls = METHODS[args.base]
        base_args = dict(args.base_args)
        if "view_size" in {f.name for f in dataclasses.fields(base_cls.Args)}:
            base_args.setdefault("view_size", args.view_size)
        base_args = from_dict(base_cls.Args, base_args, "method_args.base_args")
        self.base: CAMLearner = base_cls(base_args, supervision, class_set)
        if args.dim < 1 or args.view_size < 32:
            raise ConfigError(f"method_args: dim must be >= 1 and view_size >= 32, got {args.dim} and {args.view_size}")
        try:
            self.contrast = PixelPrototypeContrastLoss(
                args.alpha, args.beta, args.temperature, args.top_k, args.background,
                args.cross_prototype, args.cross_cam, args.intra, args.mining, args.sampling, objective=args.objective,
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"method_args: {exc}") from None

    def setup(self, model: SegmentationModel, cfg: ModelConfig) -> None:
        self.base.setup(model, cfg)
        cam_head = model.heads["cam"]
        # The projector reads what the CAM classifier reads (the reference's proj_fc beside fc8 on conv6): the head's
        # neck is shared, not copied, so the contrast shapes the CAM's own features.
        projector = ProjectionHead(cam_head.classifier.in_channels, self.args.dim, relu=True)
        model.add_head(PROJECTION, nn.Sequential(cam_head.neck, projector), "backbone")

    def mixed_kinds(self) -> tuple[str, ...]:
        return self.base.mixed_kinds()

    @classmethod
    def plan(cls, supervision: str, args: PPCArgs) -> list[Stage]:
        """The base learner's stages."""
        base = METHODS[args.base]
        return base.plan(supervision, from_dict(base.Args, args.base_args, "method_args.base_args"))

    def begin_step(self, step: int, total_steps: int) -> None:
        super().begin_step(step, total_steps)
        self.base.begin_step(step, total_steps)

    def forward(self, model: nn.Module, images: torch.Tensor) -> dict:
        outputs = self.base.forward(model, images)
        if TARGET_VIEW not in outputs:
            outputs[TARGET_VIEW] = model(rescaled_view(images, self.args.view_size), decode=False)
        return outputs

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss, terms = self.base.loss(outputs, batch)
        target = outputs[TARGET_VIEW]
        target_scores, tags, valid = self.base.cam_inputs(target, batch)
        source_scores, _, _ = self.base.cam_inputs(outputs, batch)
        grid = target_scores.shape[-2:]

        def on_grid(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x.float(), size=grid, mode="bilinear", align_corners=True)

        # The source view on the target's grid (the reference resizes the source's CAM and features, with
        # align_corners=True, then re-normalises the features); the valid pixels are the same crop's on both.
        embeddings = (F.normalize(on_grid(outputs[PROJECTION]), dim=1), target[PROJECTION].float())
        contrast, parts = self.contrast(embeddings, (on_grid(source_scores), target_scores), tags, (valid, valid))
        terms.update(cp=parts.cross_prototype, cc=parts.cross_cam, intra=parts.intra)
        return loss + contrast, terms
