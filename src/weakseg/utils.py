"""Small helpers every layer shares: the float type losses compute in, and a platform-independent string hash."""

from __future__ import annotations

import zlib

import torch


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32, or float64 when the input already is."""
    return torch.promote_types(tensor.dtype, torch.float32)


def stable_int(text: str) -> int:
    """A platform-independent hash of a string (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(text.encode("utf-8"))
