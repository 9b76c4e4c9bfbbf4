"""The ``Fit`` stage: a method's head fitted on the frozen backbone's pooled features of every training image (the
``probe`` learner), the features computed once and cached on disk.

The cache file is named by a digest of everything the features depend on: the model section of the recipe (backbone,
output stride, weights), the weights actually loaded, the method's views and neck, the data root, and each training
image's id, size and modification time. Anything changed gives another digest, so a stale file is never read; it is
rebuilt under its new name. The stage writes what a training stage writes (``last.pt``, ``recipe.yaml``,
``metrics.json``), so the stages after it read it as they read a trained model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from weakseg import distributed
from weakseg.config import to_dict
from weakseg.data.dataset import SegmentationDataset, resolve_class_set
from weakseg.data.formats import atomic_write, write_json
from weakseg.data.sample import sample_classes
from weakseg.engine.checkpoint import LAST, save_checkpoint
from weakseg.engine.device import normalize, select_device
from weakseg.engine.recipe import Recipe
from weakseg.engine.trainer import check_writable
from weakseg.errors import ConfigError
from weakseg.methods import build_method
from weakseg.models import SegmentationModel, build_model

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    output_dir: Path
    images_per_s: float
    weights_source: str
    metrics: dict


def fit_stage(recipe: Recipe, *, progress: bool = True) -> FitResult:
    """Fit the head of ``recipe.method`` (a method with ``view_features`` and ``fit_head``, e.g. ``probe``) on the
    training split and write the stage's checkpoint, recipe and metrics to ``recipe.output_dir``."""
    out = Path(recipe.output_dir)
    check_writable(out)
    start = time.perf_counter()
    torch.manual_seed(recipe.train.seed)
    device = select_device(recipe.train.device)
    class_set = resolve_class_set(recipe.data, recipe.data.train_split)
    method = build_method(recipe.method, recipe.method_args, recipe.supervision, class_set)
    if not (hasattr(method, "view_features") and hasattr(method, "fit_head")):
        raise ConfigError(f"method '{recipe.method}' has no head to fit on frozen features (a Fit stage needs one)")
    dataset = SegmentationDataset(recipe.data, recipe.data.train_split, kinds=method.label_kinds(),
                                  required=method.required_kinds(), class_set=class_set)  # fmt: skip
    model = build_model(recipe.model, class_set.num_classes)
    method.setup(model, recipe.model)
    model.to(device).eval()
    weights = model.backbone.info.weights_source
    folder = Path(method.args.feature_cache) if method.args.feature_cache else out / "features"
    key = features_key(recipe, method.args, weights, dataset)
    path = folder / f"{key}.pt"
    features = read_features(path, key)
    cached = features is not None
    local = []  # (index, classes, V×C features or None when cached) of this process's images
    for i in tqdm(distributed.shard(len(dataset)), desc="features", disable=not (progress and distributed.is_main()),
                  dynamic_ncols=True):  # fmt: skip
        sample = dataset[i]
        pooled = None
        if not cached:
            image = torch.from_numpy(sample.image).permute(2, 0, 1)[None].to(device)
            pooled = method.view_features(model, normalize(image, *model.mean_std)).cpu()
        local.append((i, sample_classes(sample, class_set.ignore_index), pooled))
    rows = sorted((row for part in distributed.all_gather_objects(local) for row in part), key=lambda row: row[0])
    classes = torch.zeros(len(dataset), class_set.num_classes)
    for i, present, _ in rows:
        classes[i, torch.from_numpy(present)] = 1.0
    if not cached:
        features = torch.stack([pooled for _, _, pooled in rows])
        if distributed.is_main():
            write_features(path, key, features)
    feature_s = time.perf_counter() - start
    fit = method.fit_head(model, features, classes)
    wall = time.perf_counter() - start
    metrics = {
        "step": fit["iterations"],
        "train_images_per_s": len(dataset) / wall,
        "weights_source": weights,
        "processes": distributed.world_size(),
        "fit": {**fit, "features_cached": cached, "feature_s": feature_s, "fit_s": wall - feature_s},
    }
    log.info("fit %s: %d images × %d views, soft margin %.4f after %d L-BFGS iterations (features %s, %.0f s)",
             recipe.method, len(dataset), features.shape[1], fit["soft_margin"], fit["iterations"],
             "cached" if cached else "computed", feature_s)  # fmt: skip
    if distributed.is_main():
        _write_stage(out, recipe, model, class_set.to_dict(), metrics)
    distributed.barrier()
    return FitResult(out, metrics["train_images_per_s"], weights, metrics)


def features_key(recipe: Recipe, args: object, weights: str, dataset: SegmentationDataset) -> str:
    """A digest of everything the cached features depend on (see the module docstring)."""
    images = []
    for record in dataset.records:
        stat = record.image_path.stat()
        images.append([record.image_id, stat.st_size, stat.st_mtime_ns])
    settings = {
        "model": to_dict(recipe.model),
        "weights": weights,
        "views": {"scales": list(args.scales), "flip": args.flip, "neck": args.neck},
        "root": str(Path(recipe.data.root).resolve()),
        "images": images,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_features(path: Path, key: str) -> torch.Tensor | None:
    """The cached features at ``path`` when they were stored under ``key``; None otherwise (absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        log.warning("%s: unreadable feature cache (%s); computing the features again", path, exc)
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        log.warning("%s: feature cache of other settings; computing the features again", path)
        return None
    return stored["features"]


def write_features(path: Path, key: str, features: torch.Tensor) -> None:
    buffer = io.BytesIO()
    torch.save({"key": key, "features": features}, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _write_stage(out: Path, recipe: Recipe, model: SegmentationModel, class_set: dict, metrics: dict) -> None:
    """The files of a finished training stage: ``last.pt`` (as the trainer writes it), ``recipe.yaml``,
    ``metrics.json``."""
    state = {
        "step": metrics["step"],
        "model": model.state_dict(),
        "optimizer": {},
        "rng": torch.get_rng_state(),
        "best_score": -1.0,
        "history": [],
        "recipe": to_dict(recipe),
        "class_set": class_set,
        "method": {},
    }
    save_checkpoint(state, out / LAST)
    (out / "recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    write_json(out / "metrics.json", metrics)
