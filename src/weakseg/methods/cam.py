"""CAM learners for tags and boxes: ``cam`` (GAP + multilabel soft margin, Zhou et al. 2016), ``seam`` (two views
and SEAM's equivariant regularisation, Wang et al. 2020) and ``hfpl`` (binomial importance sampling + feature
similarity, Jonnarth et al.), all three-stage methods:

1. ``cam``: train the classifier (a 1×1 CAM head on the backbone's last features) on image-level tags (for box
   supervision, the classes of the boxes left in the augmented crop);
2. ``pseudo``: CAMs of every training image (multi-scale + flip) → refined pseudo-labels with ignore
   (``weakseg.engine.pseudo_labels``, configured by the recipe's ``pseudo`` section);
3. ``seg``: train the segmentation model on them (cross-entropy, ignore skipped) from fresh ImageNet weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from weakseg.data.sample import LABEL_KINDS
from weakseg.errors import ConfigError
from weakseg.losses import EquivarianceLoss, FeatureSimilarityLoss, ImportanceSamplingLoss
from weakseg.methods.base import Method, register_method
from weakseg.methods.stages import Fit, PseudoLabel, Stage, Train
from weakseg.methods.supervised import FullSupervision
from weakseg.models.backbones import create_pre_logits
from weakseg.models.heads import CAMHead
from weakseg.models.segmentor import ModelConfig, SegmentationModel

NECKS = ("pretrained", "none")
# The recipe keys of a stage that trains the segmentation model on label maps with cross-entropy.
SEGMENTATION_ON_LABELS = {"method": FullSupervision.name, "supervision": "full", "method_args": {}}
TARGET_VIEW = "target_view"  # outputs key of a two-view learner's second view (its own outputs dict)


def crop_tags(batch: dict, supervision: str) -> torch.Tensor:
    """B×K 0/1 classes of each training crop: its image's tags, or (boxes) the classes of the boxes left in it.

    Mixed supervision: per image, its tags when it has them, otherwise the classes of whatever else it carries in
    the crop (boxes, points, scribbles).
    """
    if supervision == "tags":
        return batch["tags"]
    tags = torch.zeros_like(batch["tags"])
    k = tags.shape[1]
    for b, boxes in enumerate(batch["boxes"]):
        tags[b, boxes[:, 4].long()] = 1.0
    if supervision == "mixed":
        for b, points in enumerate(batch["points"]):
            tags[b, points[:, 2].long()] = 1.0
        tags = torch.maximum(tags, label_map_classes(batch["scribble"], k).to(tags.dtype))
        tags = torch.where(batch["has"]["tags"][:, None].to(tags.device), batch["tags"], tags)
    return tags


def label_map_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``B×K`` 0/1 classes present in each of ``B×H×W`` label maps (values outside ``[0, K)`` are no class)."""
    flat = labels.flatten(1)
    present = torch.zeros(flat.shape[0], num_classes + 1, device=labels.device)
    present.scatter_(1, flat.masked_fill((flat < 0) | (flat >= num_classes), num_classes), 1.0)
    return present[:, :num_classes]


def cam_pipeline(learner: Train | Fit, segmentation: Train) -> list[Stage]:
    """A CAM pipeline: the ``learner`` stage (named ``cam``), its CAMs label the training images (stage ``pseudo``),
    then ``segmentation``, which trains on those labels."""
    return [learner, PseudoLabel("pseudo", source=learner.name), segmentation]


def rescaled_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """The second view of a two-view learner: the batch resized to ``size × size`` (PPC §4.2; SEAM rescales)."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


@dataclass
class CAMArgs:
    # pretrained: the CAM head reads the backbone's own ImageNet pre-pooling layers (EfficientNet's conv_head:
    # 1×1 conv + BN + ReLU6), so the maps are linear in non-negative features as with the papers' ResNets; none:
    # the last stage's linear bottleneck directly (voc454 seeds: CAMs fire on borders and background).
    neck: str = "pretrained"


@register_method
class CAMLearner(Method):
    """Stage 1 of the CAM pipeline: L = multilabel soft margin of the globally average-pooled CAMs (HFPL eq. 17)."""

    name = "cam"
    supervisions = ("tags", "boxes", "mixed")
    Args = CAMArgs
    output = "cam"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        if self.args.neck not in NECKS:
            raise ConfigError(f"method_args.neck must be one of {', '.join(NECKS)}, not {self.args.neck!r}")
        background = self.class_set.background
        self.foreground = [c for c in range(self.class_set.num_classes) if c != background]
        self.classification = ImportanceSamplingLoss(lam=0.0)

    def mixed_kinds(self) -> tuple[str, ...]:
        """Mixed supervision: every kind gives an image's classes (tags, or those of its boxes, points, scribbles)."""
        return LABEL_KINDS

    def setup(self, model: SegmentationModel, cfg: ModelConfig) -> None:
        neck = None
        if self.args.neck == "pretrained":
            neck = create_pre_logits(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights)
        head = CAMHead(model.head_input_channels("backbone"), self.class_set.num_classes, *(neck or ()))
        model.add_head("cam", head, "backbone", pretrained=head.neck if neck else None)

    @classmethod
    def plan(cls, supervision: str, args: CAMArgs) -> list[Stage]:
        return cam_pipeline(Train("cam"), Train("seg", SEGMENTATION_ON_LABELS, labels_from="pseudo"))

    def image_tags(self, batch: dict) -> torch.Tensor:
        """B×C' 0/1 foreground tags: the image's tags, or the classes of the boxes inside the crop."""
        return crop_tags(batch, self.supervision)[:, self.foreground]

    def cam_inputs(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Foreground score maps (float32), tags, and the valid (non-padding) pixels at the CAM's size."""
        scores = outputs["cam"][:, self.foreground].float()
        valid = F.adaptive_avg_pool2d(batch["valid"][:, None].float(), scores.shape[-2:])[:, 0] > 0.5
        return scores, self.image_tags(batch), valid

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scores, tags, valid = self.cam_inputs(outputs, batch)
        loss = self.classification(scores, tags, valid)
        return loss, {"cls": loss.detach()}


@dataclass
class SEAMArgs(CAMArgs):
    view_size: int = 128  # the second view: the crop resized to view_size² (PPC's 448 → 128)
    er_weight: float = 1.0  # weight of the equivariant regularisation


@register_method
class SEAM(CAMLearner):
    """CAM learner on the crop and its rescaled copy: ``½(L_cls(x) + L_cls(A(x))) + L_ER`` (SEAM eq. 2, without
    the pixel correlation module and its ECR term); PPC's base."""

    name = "seam"
    Args = SEAMArgs

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        if self.args.view_size < 32:
            raise ConfigError(f"method_args.view_size must be at least 32 pixels, not {self.args.view_size}")
        self.equivariance = EquivarianceLoss()

    def forward(self, model: torch.nn.Module, images: torch.Tensor) -> dict:
        outputs = super().forward(model, images)
        outputs[TARGET_VIEW] = model(rescaled_view(images, self.args.view_size), decode=False)
        return outputs

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scores, tags, valid = self.cam_inputs(outputs, batch)
        target, _, target_valid = self.cam_inputs(outputs[TARGET_VIEW], batch)
        cls = (self.classification(scores, tags, valid) + self.classification(target, tags, target_valid)) / 2
        er = self.equivariance(scores, target, tags, valid, target_valid)
        return cls + self.args.er_weight * er, {"cls": cls.detach(), "er": er.detach()}


@dataclass
class HFPLArgs(CAMArgs):
    samples: int = 10  # N pixels drawn per image and class (eq. 18)
    isl_weight: float = 0.2  # λ in L_cls = (1 − λ) L_GAP + λ L_IS (eq. 16)
    fsl_weight: float = 1.0
    mu: float = 2.5  # FSL dissimilarity threshold (eq. 12)
    sigma: float = 5.0  # FSL spatial extent, CAM pixels (eq. 10)
    fsl_window: int | None = None  # None: all pixel pairs (chunked); R: pairs within R CAM pixels (reference)
    # FSL's r: "minmax" (the reference code's max_norm) or "max" (the paper's eq. 4), with the reference code's
    # background channel 1 − max_c r_c (fsl_background) or without it.
    fsl_normalise: str = "minmax"
    fsl_background: bool = True


@register_method
class HFPL(CAMLearner):
    """CAM learner + binomial importance sampling loss + feature similarity loss on present classes (HFPL §4)."""

    name = "hfpl"
    Args = HFPLArgs

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        args = self.args
        try:
            self.classification = ImportanceSamplingLoss(args.samples, args.isl_weight)
            self.similarity = FeatureSimilarityLoss(
                args.mu, args.sigma, args.fsl_window, normalise=args.fsl_normalise, background=args.fsl_background
            )
        except ValueError as exc:
            raise ConfigError(f"method_args: {exc}") from None

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scores, tags, valid = self.cam_inputs(outputs, batch)
        cls = self.classification(scores, tags, valid)
        rgb = F.adaptive_avg_pool2d(batch["image"].float() / 255.0, scores.shape[-2:])
        fsl = self.similarity(scores, rgb, tags, valid)
        return cls + self.args.fsl_weight * fsl, {"cls": cls.detach(), "fsl": fsl.detach()}
