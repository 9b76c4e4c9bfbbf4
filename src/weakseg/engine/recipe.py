"""The recipe schema: everything a run needs, in one validated tree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from weakseg.config import apply_overrides, deep_merge, from_dict, load_recipe_dict, upgrade_recipe_dict
from weakseg.data.dataset import DataConfig
from weakseg.data.transforms import AugmentConfig
from weakseg.errors import ConfigError
from weakseg.models.segmentor import ModelConfig
from weakseg.pseudo.cam import PseudoLabelConfig


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 1.0  # learning rate of the ImageNet-initialised layers (backbone, CAM neck) vs the rest
    schedule: str = "poly"  # poly | cosine | constant
    poly_power: float = 0.9
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    ckpt_every: int = 100
    val_every: int = 0  # 0: validate at the end only
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else off) | bf16 | fp16 | off
    num_threads: int | None = None  # torch intra-op threads on CPU (default: torch's choice)
    # Batch norm across processes (torchrun): batch (statistics of each process's share of the batch), sync
    # (SyncBatchNorm: of the global batch; CUDA only) or frozen (running statistics; affine parameters still train).
    norm: str = "batch"
    tensorboard: bool = True  # TensorBoard event files in <output_dir>/tensorboard (metrics.csv is always written)


@dataclass
class EvalConfig:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: int | None = None  # sliding-window size for large images (pixels, after scaling)
    boundary_tolerance: float = 0.008  # DAVIS: fraction of the image diagonal if < 1, else pixels
    max_images: int | None = None
    save_predictions: bool = False
    crf: bool = False  # refine the probabilities with a dense CRF (weakseg.pseudo.DenseCRF, SPML's settings)
    crf_iterations: int = 10


@dataclass
class Recipe:
    method: str = "full"
    supervision: str = "full"  # full | tags | boxes | points | scribbles | mixed
    method_args: dict = field(default_factory=dict)
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)  # multi-stage methods: CAMs → labels
    # Per-stage overlays of this recipe, e.g. {cam: {train: {steps: 200}}} (stage names: the method's stages).
    stages: dict = field(default_factory=dict)

    def check(self) -> Recipe:
        t = self.train
        if t.steps < 1 or t.batch_size < 1:
            raise ConfigError("train.steps and train.batch_size must be at least 1")
        if t.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"train.optimizer must be sgd or adamw, not {t.optimizer!r}")
        if t.schedule not in ("poly", "cosine", "constant"):
            raise ConfigError(f"train.schedule must be poly, cosine or constant, not {t.schedule!r}")
        if t.norm not in ("batch", "sync", "frozen"):
            raise ConfigError(f"train.norm must be batch, sync or frozen, not {t.norm!r}")
        if t.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, not {t.amp!r}")
        if self.eval.crf_iterations < 0:
            raise ConfigError(f"eval.crf_iterations must be at least 0, not {self.eval.crf_iterations}")
        if not self.data.root:
            raise ConfigError("data.root is not set (add data.root=PATH)")
        self.pseudo.check()
        return self


def load_recipe(paths: str | Path | Sequence[str | Path] | None, overrides: list[str] | None = None) -> Recipe:
    """Read recipe files, each overlaid on the previous (none: the defaults), then apply ``key=value`` overrides."""
    if paths is None:
        paths = []
    elif isinstance(paths, str | Path):
        paths = [paths]
    data: dict = {}
    for path in paths:
        data = deep_merge(data, load_recipe_dict(path))
    data = upgrade_recipe_dict(apply_overrides(data, overrides or []))
    return from_dict(Recipe, data).check()
