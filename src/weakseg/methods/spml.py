"""``spml``: semi-supervised pixel-wise metric learning (Ke, Hwang et al., SPML, ICLR 2021).

The model gains a 64-d L2-normalised embedding head on the decoder (output stride 4) and a softmax classifier
reading the *detached* embedding (``EmbeddingClassifier``). Stages (the paper's appendix and its reference scripts;
METHODS.md §4):

1. ``seg``: the embedding learns from :class:`~weakseg.losses.PixelSegmentContrastLoss`, the initial classifier from
   partial cross-entropy on the same labels: points grown into disks of 6 px, scribbles grown by 3 px, or, for tags,
   boxes and mixed labels, the pseudo-labels of a CAM pipeline run first (``method_args.cam_method``'s own stages).
2. ``relabel``: the initial classifier's scores on every training image, each class divided by its maximum, the
   classes absent from the image's labels zeroed, walked on the embedding (``weakseg.pseudo.RandomWalk``, SPML's
   settings, 1/8 of the image) and refined by the dense CRF, arg-max (``weakseg.engine.relabel``).
3. ``classifier``: a new softmax classifier trained on the frozen embedding with those labels; it alone predicts
   (no walk at inference).

``final_classifier: false`` keeps the first stage only (its classifier predicts). Every training image is
over-segmented once (``method_args.oversegment``, cached under ``method_args.region_cache`` or
``<output_dir>/regions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from weakseg.config import from_dict, to_dict
from weakseg.data.classes import ClassSet
from weakseg.data.dataset import DataConfig
from weakseg.data.sample import LABEL_KINDS, Sample
from weakseg.errors import ConfigError, TrainingError
from weakseg.losses import PartialCrossEntropy, PixelSegmentContrastLoss
from weakseg.losses.spml import (
    UNLABELLED,
    FeatureAffinity,
    ImageSimilarity,
    SemanticAnnotation,
    SemanticCooccurrence,
)
from weakseg.methods.base import METHODS, Method, learners, register_method
from weakseg.methods.cam import crop_tags, label_map_classes
from weakseg.methods.stages import PseudoLabel, Relabel, Stage, Train
from weakseg.methods.supervised import sparse_target
from weakseg.models.heads import EmbeddingClassifier, ProjectionHead
from weakseg.models.segmentor import ModelConfig, SegmentationModel
from weakseg.pseudo.oversegment import OversegmentConfig, RegionCache

EMBEDDING = "embedding"
CAM_SUPERVISIONS = ("tags", "boxes", "mixed")  # learnt through a CAM stage's pseudo-labels


@dataclass
class SPMLArgs:
    dim: int = 64  # embedding size
    # Relation weights λ and concentrations κ (eq. 4; METHODS.md §4). Recipes set the paper's per-supervision values.
    annotation_weight: float = 0.1
    annotation_concentration: float = 6.0
    cooccurrence_weight: float = 0.1
    cooccurrence_concentration: float = 8.0
    similarity_weight: float = 0.1
    similarity_concentration: float = 16.0
    affinity_weight: float = 0.0  # feature affinity: built and tested, off as in the reference code
    affinity_concentration: float = 6.0
    grid: tuple[int, int] = (6, 6)  # k-means initialisation per image (training)
    kmeans_iterations: int = 10
    memory: int = 2  # iterations of segments kept in the memory bank
    # Pixels per image whose contrast counts (null: all, the paper's). A random subset keeps the O(pixels × segments)
    # loss affordable on CPUs; segments are still the means of all their pixels.
    contrast_pixels: int | None = None
    point_radius: int = 6  # points grown into disks of this radius (pixels of the training crop)
    scribble_radius: int = 3  # scribbles grown by this many pixels
    # The softmax classifier's partial CE (it reads the detached embedding); null: the annotation relation's weight,
    # as the reference weights its classifier loss.
    classifier_weight: float | None = None
    classifier_dropout: float = 0.65
    # false (not the paper's): the classifier's CE also trains the embedding, the decoder and the backbone
    detach_classifier: bool = True
    # SPML's two classifiers: the initial one's walked scores label the training images (relabel), a new classifier
    # on the frozen embedding learns them and predicts. false: the initial classifier predicts.
    final_classifier: bool = True
    random_walk: bool = True  # the relabel stage walks the scores on the embedding
    relabel_crf: bool = True  # the relabel stage refines them with the dense CRF
    # Set by the plan on its last stage: train only a new classifier on the frozen embedding, from dense labels.
    classifier_only: bool = False
    oversegment: OversegmentConfig = field(default_factory=OversegmentConfig)
    region_cache: str | None = None  # folder of cached over-segmentations; None: <output_dir>/regions
    # Tags and boxes: the CAM learner of the first stage and its method_args.
    cam_method: str = "cam"
    cam_args: dict = field(default_factory=dict)


@register_method
class SPML(Method):
    """Embedding trained with SPML's pixel-to-segment contrast; a softmax classifier on the detached embedding."""

    name = "spml"
    supervisions = ("tags", "boxes", "points", "scribbles", "mixed")
    Args = SPMLArgs

    @classmethod
    def plan(cls, supervision: str, args: SPMLArgs) -> list[Stage]:
        """Tags, boxes, mixed: the CAM pipeline of ``cam_method`` (its own learner stage) first, SPML trained on its
        pseudo-labels; points, scribbles: SPML on the weak labels. Then, with ``final_classifier``, that model
        relabels the training images and a new classifier on its frozen embedding learns those labels."""
        stages: list[Stage] = []
        labels = None
        if supervision in CAM_SUPERVISIONS:
            learner = METHODS[args.cam_method]
            learner_plan = learner.plan(supervision, from_dict(learner.Args, args.cam_args, "method_args.cam_args"))
            pseudo = next(stage for stage in learner_plan if isinstance(stage, PseudoLabel))
            overlay = {"method": args.cam_method, "method_args": dict(args.cam_args)}
            stages = [replace(stage, overlay=overlay) if stage.name == pseudo.source else stage
                      for stage in learner_plan[: learner_plan.index(pseudo) + 1]]  # fmt: skip
            labels = pseudo.name
        stages.append(Train("seg", labels_from=labels))
        if args.final_classifier:
            labeller = "spml" if args.random_walk else "spml-no-walk"
            final = {"method_args": {**to_dict(args), "classifier_only": True}}
            stages += [Relabel("relabel", source="seg", eval={"crf": args.relabel_crf}, labeller=labeller),
                       Train("classifier", overlay=final, labels_from="relabel", init_from="seg")]  # fmt: skip
        return stages

    def __init__(self, args: SPMLArgs, supervision: str, class_set: ClassSet) -> None:
        super().__init__(args, supervision, class_set)
        if args.dim < 2:
            raise ConfigError(f"method_args.dim must be at least 2, not {args.dim}")
        args.oversegment.check()
        cam_learners = learners("cam")  # cam, seam, hfpl, ppc, probe
        if args.cam_method not in cam_learners:
            raise ConfigError(
                f"method_args.cam_method must be one of {', '.join(cam_learners)}, not {args.cam_method!r}"
            )
        try:
            self.contrast = PixelSegmentContrastLoss(
                similarity=ImageSimilarity(args.similarity_weight, args.similarity_concentration),
                annotation=SemanticAnnotation(args.annotation_weight, args.annotation_concentration),
                cooccurrence=SemanticCooccurrence(args.cooccurrence_weight, args.cooccurrence_concentration),
                affinity=FeatureAffinity(args.affinity_weight, args.affinity_concentration),
                grid=args.grid,
                iterations=args.kmeans_iterations,
                memory=args.memory,
                pixels_per_image=args.contrast_pixels,
            )
        except ValueError as exc:
            raise ConfigError(f"method_args: {exc}") from None
        self.criterion = PartialCrossEntropy(class_set.ignore_index)
        self.regions: RegionCache | None = None
        self.foreground = [c for c in range(class_set.num_classes) if c != class_set.background]

    def mixed_kinds(self) -> tuple[str, ...]:
        return LABEL_KINDS

    def label_kinds(self) -> tuple[str, ...]:
        """Tags, boxes, mixed: the pseudo-labels (as masks, from the ``pseudo`` stage) and the weak labels; the final
        classifier: the relabelled masks alone."""
        if self.args.classifier_only:
            return ("mask",)
        kinds = super().label_kinds()
        return ("mask", *kinds) if self.supervision in CAM_SUPERVISIONS else kinds

    def required_kinds(self) -> tuple[str, ...]:
        return ("mask",) if self.args.classifier_only else super().required_kinds()

    def bind(self, data: DataConfig, output_dir: Path, num_images: int) -> None:
        if self.args.classifier_only:
            return
        folder = Path(self.args.region_cache) if self.args.region_cache else output_dir / "regions"
        self.regions = RegionCache(folder, self.args.oversegment, scope=str(Path(data.root).resolve()))

    def prepare_sample(self, sample: Sample) -> Sample:
        if self.args.classifier_only:
            return sample
        if self.regions is None:
            raise TrainingError("spml: the over-segmentation cache is not set up (Method.bind was not called)")
        return self.regions(sample)

    def setup(self, model: SegmentationModel, cfg: ModelConfig) -> None:
        """The embedding head and the classifier on it; the final classifier's stage freezes everything else."""
        model.add_head(EMBEDDING, ProjectionHead(model.head_input_channels("decoder"), self.args.dim), "decoder")
        classifier = EmbeddingClassifier(self.args.dim, self.class_set.num_classes, self.args.classifier_dropout)
        model.set_classifier(classifier, source=EMBEDDING, detach=self.args.detach_classifier)
        if self.args.classifier_only:
            trainable = {id(p) for p in model.classifier.parameters()}
            for parameter in model.parameters():
                parameter.requires_grad_(id(parameter) in trainable)

    def initialise(self, model: SegmentationModel, weights: dict[str, torch.Tensor]) -> None:
        """The final classifier's stage takes the embedding network and leaves the new classifier as initialised."""
        if not self.args.classifier_only:
            return super().initialise(model, weights)
        kept = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(kept, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise TrainingError(f"spml: the embedding's weights do not fit the model ({missing + unexpected})")

    def state_dict(self) -> dict:
        """The contrast's state: its memory bank."""
        return self.contrast.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.contrast.load_state_dict(state)

    def classifier_weight(self) -> float:
        weight = self.args.classifier_weight
        return self.args.annotation_weight if weight is None else weight

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if self.args.classifier_only:  # the final classifier: cross-entropy on the relabelled images
            ce = self.criterion(outputs["logits"], batch["mask"])
            return ce, {"ce": ce.detach()}
        ignore = self.class_set.ignore_index
        target, classes = self.semantic_target(batch)
        embedding = outputs[EMBEDDING]
        size = embedding.shape[-2:]

        def nearest(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0].long()

        labels = nearest(target)
        labels = labels.masked_fill(labels == ignore, UNLABELLED)
        regions = nearest(batch["regions"])
        valid = nearest(batch["valid"]).bool() & (regions >= 0)
        contrast, relation_terms = self.contrast(embedding.float(), labels, regions, classes, valid)
        ce = self.criterion(outputs["logits"], target)
        terms = {k: v for k, v in relation_terms.items() if self.contrast.relations[k].weight}
        return contrast + self.classifier_weight() * ce, {**terms, "ce": ce.detach()}

    def semantic_target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``B×H×W`` labels of the annotation relation and the classifier (255 = none), and the ``B×C`` foreground
        classes of the co-occurrence relation: grown points / scribbles, or the CAM pseudo-labels (tags, boxes);
        mixed supervision takes each image's own points / scribbles when it has some, its pseudo-labels otherwise."""
        args, ignore = self.args, self.class_set.ignore_index
        if self.supervision in ("points", "scribbles"):
            target = sparse_target(batch, self.label_kinds(), args.point_radius, args.scribble_radius, ignore)
            return target, label_map_classes(target, self.class_set.num_classes)[:, self.foreground]
        classes = crop_tags(batch, self.supervision)[:, self.foreground]
        if self.supervision != "mixed":
            return batch["mask"], classes
        sparse = sparse_target(batch, LABEL_KINDS, args.point_radius, args.scribble_radius, ignore)
        own = (batch["has"]["points"] | batch["has"]["scribbles"]).to(sparse.device)[:, None, None]
        return torch.where(own, sparse, batch["mask"]), classes
