"""Device selection, mixed precision and input normalisation — the pieces every engine loop shares."""

from __future__ import annotations

import contextlib
import logging

import torch

from weakseg.distributed import env_world_size, local_rank
from weakseg.errors import ConfigError

log = logging.getLogger(__name__)


def select_device(spec: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple MPS, else CPU; otherwise the device named."""
    if spec == "auto":
        if torch.cuda.is_available():
            return _process_gpu(torch.device("cuda"))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec} but CUDA is not available on this machine")
    return _process_gpu(device)


def _process_gpu(device: torch.device) -> torch.device:
    """Under torchrun, an unnumbered CUDA device is the GPU of the process's ``LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and env_world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def amp_dtype(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None: full precision)."""
    if spec == "off" or device.type != "cuda":
        if spec in ("bf16", "fp16") and device.type != "cuda":
            log.info("train.amp=%s ignored on %s (mixed precision is used on CUDA only)", spec, device)
        return None
    if spec == "fp16":
        return torch.float16
    if spec == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 B×3×H×W images → float, scaled to [0, 1] and normalised with the backbone's mean and std."""
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def move_batch(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a collated batch (nested dicts and lists included) to ``device``."""
    non_blocking = device.type == "cuda"

    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=non_blocking)
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        return v

    return move(batch)
