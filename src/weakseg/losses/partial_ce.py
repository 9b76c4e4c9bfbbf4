"""Partial cross-entropy: cross-entropy over the labelled pixels only (Tang et al., CVPR'18, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.data.classes import IGNORE_INDEX


class PartialCrossEntropy(nn.Module):
    """Mean cross-entropy over pixels whose target is not ``ignore_index``.

    Logits at a lower resolution than the target are upsampled bilinearly first. An image batch with no labelled
    pixel gives a zero loss that still depends on the logits (so backward works and changes nothing).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        # Summed, then divided by the labelled count (the mean over labelled pixels): no host sync to test whether
        # any pixel is labelled; with none the sum is a zero that still depends on the logits.
        labelled = (target != self.ignore_index).sum()
        total = F.cross_entropy(
            logits.float(),
            target,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        return total / labelled.clamp_min(1)
