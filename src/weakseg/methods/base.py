"""A method = the labels it trains from, the heads it adds to the model and the loss it computes per batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from weakseg.config import from_dict
from weakseg.data.classes import ClassSet
from weakseg.data.dataset import DataConfig
from weakseg.data.sample import Sample
from weakseg.errors import ConfigError
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
    # The stages ``weakseg train`` runs (engine.pipeline): one training stage, or e.g. cam → pseudo → seg.
    stages: ClassVar[tuple[str, ...]] = ("train",)
    # False for learners whose model output is not a segmentation (CAM classifiers): the decoder is not run and
    # the stage is not validated on the val masks.
    trains_decoder: ClassVar[bool] = True

    def __init__(self, args: object, supervision: str, class_set: ClassSet) -> None:
        if supervision not in self.supervisions:
            raise ConfigError(
                f"method '{self.name}' trains from {', '.join(self.supervisions)}, not supervision '{supervision}'"
            )
        self.args, self.supervision, self.class_set = args, supervision, class_set
        self.stages = type(self).stages_for(supervision)
        self.step, self.total_steps = 0, 1

    @classmethod
    def stages_for(cls, supervision: str) -> tuple[str, ...]:
        """The stages ``weakseg train`` runs for this supervision (a method may need a CAM stage for tags only)."""
        return cls.stages

    def label_kinds(self) -> tuple[str, ...]:
        """Label kinds the training split must load (``mask`` only for full supervision)."""
        if self.supervision == "full":
            return ("mask",)
        if self.supervision == "mixed":
            return tuple(k for k in ("tags", "boxes", "points", "scribbles") if k in self.mixed_kinds())
        return (self.supervision,)

    def required_kinds(self) -> tuple[str, ...]:
        """Kinds every training image must carry (``any-weak``: at least one of the loaded weak kinds)."""
        return ("any-weak",) if self.supervision == "mixed" else self.label_kinds()

    def mixed_kinds(self) -> tuple[str, ...]:
        return ()

    def setup(self, model: nn.Module, cfg: ModelConfig) -> None:
        """Attach the auxiliary heads the method needs (none by default) to ``model``, built from ``cfg``."""

    def stage_overlay(self, stage: str, output_dir: Path) -> dict:
        """Recipe keys a stage overrides (e.g. the second stage of a CAM pipeline trains ``full`` on pseudo-labels);
        ``output_dir`` is the pipeline's output folder."""
        return {}

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
        return model(images, decode=self.trains_decoder)

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def build_method(name: str, args: dict | None, supervision: str, class_set: ClassSet) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    cls = METHODS[name]
    return cls(from_dict(cls.Args, args or {}, "method_args"), supervision, class_set)
