"""A method = the labels it trains from, the heads it adds to the model and the loss it computes per batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from weakseg.config import from_dict
from weakseg.data.classes import ClassSet
from weakseg.data.dataset import DataConfig
from weakseg.data.sample import LABEL_KINDS, Sample
from weakseg.errors import ConfigError
from weakseg.methods.stages import Stage, Train
from weakseg.models.segmentor import ModelConfig

SUPERVISIONS = ("full", "tags", "boxes", "points", "scribbles", "mixed")


@dataclass
class NoArgs:
    pass


class Method:
    """Base class of every training method; subclasses register with :func:`register_method`."""

    name: ClassVar[str]
    supervisions: ClassVar[tuple[str, ...]]
    Args: ClassVar[type] = NoArgs
    # What the trained model puts out: a segmentation (the decoder runs, the stage is validated on the val masks) or
    # class activation maps (CAM learners: the decoder is not run; their model labels the training images).
    output: ClassVar[Literal["segmentation", "cam"]] = "segmentation"

    def __init__(self, args: object, supervision: str, class_set: ClassSet) -> None:
        if supervision not in self.supervisions:
            raise ConfigError(
                f"method '{self.name}' trains from {', '.join(self.supervisions)}, not supervision '{supervision}'"
            )
        self.args, self.supervision, self.class_set = args, supervision, class_set
        self.step, self.total_steps = 0, 1

    @classmethod
    def plan(cls, supervision: str, args: object) -> list[Stage]:
        """The stages ``weakseg train`` runs for this supervision and these arguments (one training stage by
        default; e.g. CAM → pseudo-labels → segmentation for the CAM learners)."""
        return [Train("train")]

    @classmethod
    def trains_by_steps(cls, supervision: str) -> bool:
        """Whether the method's first stage trains by gradient steps with its default arguments (a linear probe fits
        its head instead), so that another method can add its own loss terms to those steps."""
        return isinstance(cls.plan(supervision, from_dict(cls.Args, {}, "method_args"))[0], Train)

    def label_kinds(self) -> tuple[str, ...]:
        """Label kinds the training split must load (``mask`` only for full supervision)."""
        if self.supervision == "full":
            return ("mask",)
        if self.supervision == "mixed":
            return tuple(k for k in LABEL_KINDS if k in self.mixed_kinds())
        return (self.supervision,)

    def required_kinds(self) -> tuple[str, ...]:
        """Kinds every training image must carry (``any-weak``: at least one of the loaded weak kinds)."""
        return ("any-weak",) if self.supervision == "mixed" else self.label_kinds()

    def mixed_kinds(self) -> tuple[str, ...]:
        return ()

    def setup(self, model: nn.Module, cfg: ModelConfig) -> None:
        """Attach the auxiliary heads the method needs (none by default) to ``model``, built from ``cfg``."""

    def initialise(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Start ``model`` (built and set up) from an earlier stage's ``weights`` (a stage's ``init_from``): all of
        them by default."""
        model.load_state_dict(weights)

    def begin_step(self, step: int, total_steps: int) -> None:
        """Called by the trainer before each step's loss (0-based ``step``): for losses that follow the schedule."""
        self.step, self.total_steps = step, total_steps

    def prepare_sample(self, sample: Sample) -> Sample:
        """Per training sample, before augmentation: what the method adds to it (e.g. SPML's over-segmentation)."""
        return sample

    def bind(self, data: DataConfig, output_dir: Path, num_images: int) -> None:
        """Called by the trainer with the run's data, output folder (for caches a method keeps on disk) and number of
        training images."""

    def state_dict(self) -> dict:
        """Training state the method carries between steps (e.g. a memory bank), saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def forward(self, model: nn.Module, images: torch.Tensor) -> dict:
        """The model outputs the loss reads, from the normalised ``images`` of a batch (one forward by default;
        two-view learners add their second view)."""
        return model(images, decode=self.output == "segmentation")

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def learners(output: str) -> list[str]:
    """The registered methods whose model puts out ``output`` (``cam``: the CAM learners), sorted."""
    return sorted(name for name, cls in METHODS.items() if cls.output == output)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def method_plan(name: str, args: dict | None, supervision: str) -> list[Stage]:
    """The stages method ``name`` runs with ``method_args`` ``args`` (checked against its ``Args``)."""
    cls = method_class(name)
    return cls.plan(supervision, from_dict(cls.Args, args or {}, "method_args"))


def build_method(name: str, args: dict | None, supervision: str, class_set: ClassSet) -> Method:
    cls = method_class(name)
    return cls(from_dict(cls.Args, args or {}, "method_args"), supervision, class_set)
