"""A method's plan: the stages ``weakseg train`` runs, in order, as data (IRN's explicit step list, with objects).

A method declares its stages (:meth:`weakseg.methods.Method.plan`); ``weakseg.engine.pipeline`` runs them. Stages
name each other, never folders: the pipeline alone decides where a stage writes and turns ``labels_from`` into the
path of that stage's label maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Train:
    """Train a model with the recipe, overlaid with ``overlay`` (recipe keys, e.g. another learner and its
    ``method_args``, which replace the recipe's); with ``labels_from``, the label maps of that stage replace the
    training split's masks; with ``init_from``, the model starts from that stage's model (as the method's
    ``initialise`` takes it) instead of ImageNet weights alone."""

    name: str
    overlay: dict = field(default_factory=dict)
    labels_from: str | None = None
    init_from: str | None = None


@dataclass(frozen=True)
class Fit:
    """Fit the method's head on the frozen backbone's features of every training image (cached), without gradient
    steps: a linear probe. ``overlay`` as for :class:`Train`."""

    name: str
    overlay: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PseudoLabel:
    """Label every training image with the CAMs of stage ``source``'s model (the recipe's ``pseudo`` settings); with
    no ``source``, boxes are labelled from their box prior alone (``pseudo.box_cam_weight: 0``)."""

    name: str
    source: str | None = None


@dataclass(frozen=True)
class Relabel:
    """Label every training image with stage ``source``'s model, under the recipe's ``eval`` settings overlaid with
    ``eval``: by its prediction (``labeller="prediction"``) or by one of the labellers of
    :data:`weakseg.engine.relabel.LABELLERS` (e.g. SPML's random walk of the classifier's scores)."""

    name: str
    source: str
    eval: dict = field(default_factory=dict)
    labeller: str = "prediction"


Stage = Train | Fit | PseudoLabel | Relabel
ModelStage = Train | Fit  # stages that make a model (a checkpoint)
LabelStage = PseudoLabel | Relabel  # stages that write label maps for the training images


def check_plan(plan: list[Stage]) -> list[Stage]:
    """``plan`` itself, after checking that names are unique, that a stage reads only stages before it, that labels
    come from labelling stages and models from training or fitting stages, and that it ends with a training stage."""
    seen: dict[str, Stage] = {}
    for stage in plan:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} appears twice in the plan")
        if isinstance(stage, Train):
            reads = [(stage.labels_from, LabelStage), (stage.init_from, ModelStage)]
        else:
            reads = [(getattr(stage, "source", None), ModelStage)]
        for read, expected in reads:
            if read is None:
                continue
            if read not in seen:
                raise ValueError(f"stage {stage.name!r} reads {read!r}, which does not run before it")
            if not isinstance(seen[read], expected):
                raise ValueError(f"stage {stage.name!r} reads {read!r}, a {type(seen[read]).__name__} stage")
        seen[stage.name] = stage
    if not plan or not isinstance(plan[-1], Train):
        raise ValueError("a plan ends with a training stage")
    return plan
