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
    training split's masks."""

    name: str
    overlay: dict = field(default_factory=dict)
    labels_from: str | None = None


@dataclass(frozen=True)
class Fit:
    """Fit the method's head on the frozen backbone's features of every training image (cached), without gradient
    steps: a linear probe. ``overlay`` as for :class:`Train`."""

    name: str
    overlay: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PseudoLabel:
    """Label every training image with the CAMs of stage ``source``'s model (the recipe's ``pseudo`` settings)."""

    name: str
    source: str


@dataclass(frozen=True)
class Relabel:
    """Label every training image with the prediction of stage ``source``'s model, under the recipe's ``eval``
    settings overlaid with ``eval``."""

    name: str
    source: str
    eval: dict = field(default_factory=dict)


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
        wanted = stage.labels_from if isinstance(stage, Train) else getattr(stage, "source", None)
        if wanted is not None:
            if wanted not in seen:
                raise ValueError(f"stage {stage.name!r} reads {wanted!r}, which does not run before it")
            expected = LabelStage if isinstance(stage, Train) else ModelStage
            if not isinstance(seen[wanted], expected):
                raise ValueError(f"stage {stage.name!r} reads {wanted!r}, a {type(seen[wanted]).__name__} stage")
        seen[stage.name] = stage
    if not plan or not isinstance(plan[-1], Train):
        raise ValueError("a plan ends with a training stage")
    return plan
