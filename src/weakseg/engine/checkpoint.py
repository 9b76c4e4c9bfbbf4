"""Atomic, verified, safely-loadable checkpoints.

A checkpoint carries a SHA-256 digest of its weights: a file that loads but whose tensors were damaged on disk is
reported as corrupt instead of resuming from wrong weights. The trainer's ``last.pt`` keeps the checkpoint it
replaces as ``last.previous.pt`` (a hard link, no copy), so a damaged newest checkpoint still leaves the one before.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from weakseg.config import apply_overrides, from_dict, upgrade_recipe_dict
from weakseg.data.classes import ClassSet
from weakseg.data.formats import atomic_write
from weakseg.engine.recipe import Recipe
from weakseg.errors import TrainingError
from weakseg.methods import build_method
from weakseg.models import SegmentationModel, build_model

log = logging.getLogger(__name__)

FORMAT = "weakseg-checkpoint-v1"
LAST = "last.pt"  # the checkpoint a run resumes from


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in key order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save_checkpoint(state: dict, path: str | Path, *, keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename): never a half-written checkpoint.

    With ``keep_previous`` the checkpoint it replaces stays as :func:`previous_path`.
    """
    path = Path(path)
    if keep_previous and path.is_file():
        keep = previous_path(path)
        staged = keep.with_name(f".{keep.name}.link")
        staged.unlink(missing_ok=True)
        try:
            os.link(path, staged)
        except OSError:  # no hard links on this filesystem: copy
            atomic_write(staged, lambda f: f.write(path.read_bytes()))
        os.replace(staged, keep)
    digest = weights_digest(state["model"]) if "model" in state else None
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "digest": digest, **state}, f))


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing, truncated, damaged or foreign file is a clear error.
    Its recipe comes with moved keys at their current places."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: report, never execute
        raise TrainingError(f"{path}: checkpoint is corrupt or unreadable ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a weakseg checkpoint")
    if state.get("digest") is not None and weights_digest(state["model"]) != state["digest"]:
        raise TrainingError(f"{path}: checkpoint is corrupt (its weights do not match the digest written with them)")
    if isinstance(state.get("recipe"), dict):
        state["recipe"] = upgrade_recipe_dict(state["recipe"])
    return state


def load_latest_good(path: Path) -> tuple[dict, Path]:
    """The checkpoint at ``path``, or, when that one is corrupt or missing, the one it replaced (with a warning)."""
    try:
        return load_checkpoint(path), path
    except TrainingError as error:
        fallback = previous_path(path)
        if not fallback.is_file():
            raise
        state = load_checkpoint(fallback)
        log.warning("%s; resuming from the checkpoint before it, %s (step %d)", error, fallback, state["step"])
        return state, fallback


def load_model_from_checkpoint(
    path: str | Path, device: torch.device, overrides: Sequence[str] = ()
) -> tuple[SegmentationModel, Recipe, dict]:
    """Rebuild the model of a checkpoint (no ImageNet weights needed) and load its weights. ``overrides``
    (``key=value``) change the checkpoint's recipe before the model and its method are built, so that inference
    settings such as ``eval.crf=true`` take effect."""
    state = load_checkpoint(path)
    recipe = from_dict(Recipe, apply_overrides(state["recipe"], list(overrides)))
    class_set = ClassSet.from_dict(state["class_set"])
    recipe.model.pretrained = False
    model = build_model(recipe.model, class_set.num_classes)
    build_method(recipe.method, recipe.method_args, recipe.supervision, class_set).setup(model, recipe.model)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), recipe, state
