"""Atomic, safely-loadable checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from weakseg.data.formats import atomic_write
from weakseg.errors import TrainingError

FORMAT = "weakseg-checkpoint-v1"


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename): never a half-written checkpoint."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing, truncated or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: report, never execute
        raise TrainingError(f"{path}: checkpoint is corrupt or unreadable ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a weakseg checkpoint")
    return state
