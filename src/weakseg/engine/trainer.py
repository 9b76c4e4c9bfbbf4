"""One trainer for every method: steps, schedule, checkpoints, exact resume, validation, NaN guard."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from weakseg import distributed
from weakseg.config import to_dict
from weakseg.data.dataset import SegmentationDataset, resolve_class_set
from weakseg.data.formats import write_json
from weakseg.data.loader import AugmentedDataset, PreparedTransform, StepSampler, collate
from weakseg.data.transforms import JointTransform
from weakseg.engine.checkpoint import LAST, load_checkpoint, load_latest_good, previous_path, save_checkpoint
from weakseg.engine.device import amp_dtype, autocast, move_batch, normalize, select_device
from weakseg.engine.evaluator import evaluate
from weakseg.engine.recipe import Recipe
from weakseg.engine.run_log import RunLog
from weakseg.errors import ConfigError, TrainingError
from weakseg.methods import Method, build_method
from weakseg.models import SegmentationModel, build_model

log = logging.getLogger(__name__)

# Recipe sections a resumed run must share with the checkpoint (the schedule may be extended).
RESUME_INVARIANTS = ("method", "supervision", "method_args", "model", "data", "augment")


def lr_factor(step: int, total: int, schedule: str, power: float, warmup: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then poly ((1 − t)^power), cosine or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    if schedule == "poly":
        return (1.0 - t) ** power
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def check_writable(folder: Path) -> None:
    """Fail before training starts when the output folder cannot be created or written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise TrainingError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


class TrainingStep(nn.Module):
    """A method's forward pass and loss on a model, as one module: what DistributedDataParallel wraps, so that a
    method's several forward passes (two views) make one DDP step, and the parameters its loss leaves unused (a CAM
    learner's decoder) are found from the loss itself."""

    def __init__(self, model: SegmentationModel, method: Method) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, images: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.method.loss(self.method.forward(self.model, images), batch)


def set_train_mode(model: nn.Module, norm: str) -> None:
    """``model.train()``, except that modules whose parameters are all frozen stay in eval mode (their batch norms
    keep their statistics, their dropout is off); with ``train.norm=frozen`` every batch norm keeps normalising with
    its running statistics."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters())
        if (parameters and not any(p.requires_grad for p in parameters)) or (
            norm == "frozen" and isinstance(module, nn.modules.batchnorm._BatchNorm)
        ):
            module.eval()


def check_free_space(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fail before training starts when the output folder's disk cannot hold the run's checkpoints: ``last.pt``,
    the one it replaces, ``best.pt`` and a temporary copy while one is written (weights + optimizer state each)."""
    tensors = [*model.parameters(), *model.buffers()]
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    slots = 2 if isinstance(optimizer, torch.optim.AdamW) else 1  # AdamW: two moments; SGD: momentum
    needed = 4 * weight_bytes * (1 + slots) + 2**20
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TrainingError(
            f"{folder}: only {free / 2**20:.0f} MB free on its disk; the run's checkpoints need about "
            f"{needed / 2**20:.0f} MB. Free some space or set output_dir to another disk"
        )


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    metrics: dict
    train_images_per_s: float
    wall_s: float


class Trainer:
    """Builds data, model and method from a recipe and runs (or resumes) training."""

    def __init__(self, recipe: Recipe, *, progress: bool = True, init: Path | None = None) -> None:
        """``init``: a checkpoint whose weights the model starts from, as the method takes them
        (:meth:`~weakseg.methods.Method.initialise`; e.g. an earlier stage's model)."""
        self.recipe, self.progress = recipe, progress and distributed.is_main()
        self.out = Path(recipe.output_dir)
        check_writable(self.out)
        t = recipe.train
        self.world = distributed.world_size()
        if t.batch_size % self.world:
            raise ConfigError(
                f"train.batch_size {t.batch_size} (the global batch) is not divisible by {self.world} processes"
            )
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.device = select_device(t.device)
        self.amp = amp_dtype(t.amp, self.device)
        torch.manual_seed(t.seed)
        self.class_set = resolve_class_set(recipe.data, recipe.data.train_split)
        self.method: Method = build_method(recipe.method, recipe.method_args, recipe.supervision, self.class_set)
        self.train_set = SegmentationDataset(
            recipe.data,
            recipe.data.train_split,
            kinds=self.method.label_kinds(),
            required=self.method.required_kinds(),
            class_set=self.class_set,
        )
        self.method.bind(recipe.data, self.out, len(self.train_set))
        self.val_set = self._val_set()
        self.model: SegmentationModel = build_model(recipe.model, self.class_set.num_classes)
        self.method.setup(self.model, recipe.model)
        if init is not None:
            self.method.initialise(self.model, load_checkpoint(init)["model"])
            log.info("weights from %s", init)
        if t.norm == "sync" and self.world > 1:
            if self.device.type != "cuda":
                raise ConfigError("train.norm=sync needs CUDA processes (PyTorch's SyncBatchNorm has no CPU kernel); "
                                  "use train.norm=batch or frozen on the CPU")  # fmt: skip
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        self.step_module: nn.Module = TrainingStep(self.model, self.method)
        if self.world > 1:
            self.step_module = DistributedDataParallel(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # CAM learners leave the decoder unused; every other method's loss reaches every parameter.
                find_unused_parameters=self.method.output != "segmentation",
            )
        self.optimizer = self._optimizer()
        check_free_space(self.out, self.model, self.optimizer)
        self.step = 0
        self.best_score = -1.0
        self.history: list[dict] = []
        self.run_log: RunLog | None = None

    def _val_set(self) -> SegmentationDataset | None:
        data = self.recipe.data
        if not data.val_split or data.masks is None or self.method.output != "segmentation":
            return None
        return SegmentationDataset(data, data.val_split, kinds=("mask",), required=("mask",), class_set=self.class_set)

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.recipe.train
        pretrained = self.model.pretrained_parameters()  # the backbone and the heads' ImageNet layers
        ids = {id(p) for p in pretrained}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        groups = [
            {"params": pretrained, "lr_mult": t.backbone_lr_mult},
            {"params": rest, "lr_mult": 1.0},
        ]
        if t.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "best_score": self.best_score,
            "history": self.history,
            "recipe": to_dict(self.recipe),
            "class_set": self.class_set.to_dict(),
            "method": self.method.state_dict(),
        }

    def save(self, name: str) -> None:
        """Rank 0 writes the checkpoint; every process waits for it."""
        if distributed.is_main():
            save_checkpoint(self.state(), self.out / name, keep_previous=name == LAST)
        distributed.barrier()

    def resume(self, path: Path | None = None) -> bool:
        """Restore from ``path`` (default: the output folder's ``last.pt``, or the one before it when that is corrupt);
        False if there is none."""
        if path is None:
            path = self.out / LAST
            if not path.is_file() and not previous_path(path).is_file():
                return False
            state, path = load_latest_good(path)
        else:
            state = load_checkpoint(path)
        saved, current = state["recipe"], to_dict(self.recipe)
        changed = [k for k in RESUME_INVARIANTS if saved.get(k) != current.get(k)]
        if changed:
            raise TrainingError(f"{path}: cannot resume, the recipe's {', '.join(changed)} changed since it was saved")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.step, self.best_score, self.history = state["step"], state["best_score"], state["history"]
        self.method.load_state_dict(state.get("method", {}))
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # ------------------------------------------------------------------ training
    def _loader(self) -> torch.utils.data.DataLoader:
        t, data = self.recipe.train, self.recipe.data
        transform = PreparedTransform(self.method.prepare_sample, JointTransform(self.recipe.augment))
        dataset = AugmentedDataset(self.train_set, transform, self.class_set.num_classes, t.seed)
        sampler = StepSampler(
            len(self.train_set), t.batch_size, t.steps, t.seed, start_step=self.step,
            rank=distributed.rank(), world_size=self.world,
        )  # fmt: skip
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=data.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_single_thread_worker,
            generator=torch.Generator().manual_seed(t.seed),
            prefetch_factor=4 if data.num_workers > 0 else None,
            persistent_workers=data.num_workers > 0,
        )

    def _set_lr(self) -> float:
        t = self.recipe.train
        factor = lr_factor(self.step, t.steps, t.schedule, t.poly_power, t.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = t.lr * factor * group["lr_mult"]
        return t.lr * factor

    def train_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """One optimisation step; returns the (detached) loss and the method's loss terms."""
        mean, std = self.model.mean_std
        batch = move_batch(batch, self.device)
        images = normalize(batch["image"], mean, std)
        self.method.begin_step(self.step, self.recipe.train.steps)
        with autocast(self.device, self.amp):
            loss, terms = self.step_module(images, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.train.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.train.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), terms

    def _guard(self, nonfinite: torch.Tensor, loss: torch.Tensor) -> None:
        """Stop, before any checkpoint is written, when a loss since the last check was NaN or infinite (in any
        process: they all stop)."""
        if bool(distributed.all_reduce(nonfinite.float(), "max")):
            raise TrainingError(
                f"non-finite loss ({float(loss)}) by step {self.step}; stopped without saving. Lower train.lr, "
                f"set train.max_grad_norm, or check the labels. Last good checkpoint: {self.out / LAST}"
            )

    def fit(self, until: int | None = None) -> TrainResult:
        """Train to ``train.steps`` (or stop after step ``until``, saving ``last.pt``, to be resumed later).

        Throughput counts wall-clock time between steps, data loading included.
        """
        t = self.recipe.train
        stop = t.steps if until is None else min(until, t.steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        set_train_mode(self.model, t.norm)
        if distributed.is_main():
            self._write_run_files()
            self.run_log = RunLog(self.out, self.step, tensorboard=t.tensorboard)
        wall_start = time.perf_counter()
        try:
            images_per_s = self._train_until(stop)
            metrics = self._finish(images_per_s) if self.step == t.steps else {}
        finally:
            if self.run_log is not None:
                self.run_log.close()
                self.run_log = None
        return TrainResult(self.out, self.step, metrics, images_per_s, time.perf_counter() - wall_start)

    def _train_until(self, stop: int) -> float:
        """Steps up to ``stop``; returns the training images/s over them."""
        t = self.recipe.train
        start_step, wall_start = self.step, time.perf_counter()
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        bar = tqdm(total=t.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        for batch in self._loader():
            lr = self._set_lr()
            loss, terms = self.train_step(batch)
            nonfinite |= ~torch.isfinite(loss)
            self.step += 1
            bar.update(1)
            done = self.step == stop
            if self.step % t.log_every == 0 or done:
                self._guard(nonfinite, loss)
                row = {"step": self.step, "lr": lr, **self._mean_over_processes({"loss": loss, **terms})}
                row["images_per_s"] = t.batch_size * (self.step - start_step) / (time.perf_counter() - wall_start)
                self._record(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}", lr=f"{lr:.2e}")
            if self.val_set is not None and t.val_every and self.step % t.val_every == 0 and self.step < t.steps:
                self._validate()
            if self.step % t.ckpt_every == 0 or done:
                self._guard(nonfinite, loss)
                self.save(LAST)
            if done:
                break
        bar.close()
        return t.batch_size * (self.step - start_step) / max(time.perf_counter() - wall_start, 1e-9)

    def _finish(self, images_per_s: float) -> dict:
        """The end of training: final validation, ``last.pt`` and ``metrics.json``."""
        metrics = {}
        if self.val_set is not None:
            metrics = self._validate()
            self.save(LAST)
        if distributed.is_main():
            summary = {**metrics, "step": self.step, "train_images_per_s": images_per_s, "processes": self.world,
                       "weights_source": self.model.backbone.info.weights_source}  # fmt: skip
            if self.device.type == "cuda":
                summary["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            write_json(self.out / "metrics.json", summary)
        distributed.barrier()
        return metrics

    def _record(self, row: dict) -> None:
        """A logged row: into the history (saved in checkpoints) and, on rank 0, ``metrics.csv`` and TensorBoard."""
        self.history.append(row)
        if self.run_log is not None:
            self.run_log.write(row)

    def _validate(self) -> dict:
        metrics = evaluate(
            self.model,
            self.val_set,
            self.recipe.eval,
            self.device,
            num_workers=self.recipe.data.num_workers,
            progress=self.progress,
        )
        set_train_mode(self.model, self.recipe.train.norm)
        log.info("step %d: val mIoU %.4f, boundary F %.4f", self.step, metrics["miou"], metrics["boundary_f"])
        self._record({"step": self.step, "val_miou": metrics["miou"], "val_boundary_f": metrics["boundary_f"]})
        if metrics["miou"] > self.best_score:
            self.best_score = metrics["miou"]
            self.save("best.pt")
        return metrics

    def _mean_over_processes(self, values: dict) -> dict[str, float]:
        """The logged loss terms, averaged over the processes (one collective, at logging steps only)."""
        stacked = torch.stack(
            [torch.as_tensor(v, dtype=torch.float32, device=self.device).reshape(()) for v in values.values()]
        )
        return dict(zip(values, distributed.all_reduce(stacked, "mean").tolist(), strict=True))

    def _write_run_files(self) -> None:
        (self.out / "recipe.yaml").write_text(yaml.safe_dump(to_dict(self.recipe), sort_keys=False))


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)
