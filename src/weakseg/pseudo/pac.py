"""PMP's parameter-free pixel-adaptive convolution refiner (papers/pmp-single-stage-points.txt §3.1).

Each layer replaces a class score by a weighted mean over a dilated window, with the kernel
``k_ij,ln = −|X_ij − X_ln| / σ_ij · μ_ij`` (eq. 2): ``X`` the image in [0, 1] (L1 over RGB), ``σ_ij`` the colour
standard deviation over the window, ``μ_ij`` the class's mean score over the window in the previous layer's output.
The paper leaves the normalisation of ``k`` open; as in PAMR (Araslanov & Roth), which PMP builds on, the weights
are ``softmax`` of ``k`` over the window, so a uniform region keeps its scores and scores do not leak across a
colour edge. Nothing is learnt; the layers run under ``no_grad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The paper's 12 layers: kernel sizes (7, 7, 5, 5, 3, …) and dilations (1, 1, 2, 2, …, 32, 32).
KERNEL_SIZES = (7, 7, 5, 5, 3, 3, 3, 3, 3, 3, 3, 3)
DILATIONS = (1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32)


def _windows(x: torch.Tensor, size: int, dilation: int) -> torch.Tensor:
    """``B×C×O×H×W`` values of each pixel's ``size×size`` window dilated by ``dilation`` (edges replicated)."""
    b, c, h, w = x.shape
    pad = dilation * (size // 2)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return F.unfold(padded, size, dilation=dilation).reshape(b, c, size * size, h, w)


def pac_layer(scores: torch.Tensor, image: torch.Tensor, size: int, dilation: int, eps: float = 1e-5) -> torch.Tensor:
    """One refinement layer: ``B×K×H×W`` scores, ``B×3×H×W`` image in [0, 1] at the same size."""
    colours = _windows(image, size, dilation)  # B×3×O×H×W
    centre = image[:, :, None]
    difference = (colours - centre).abs().sum(1)  # B×O×H×W, L1 over RGB
    sigma = colours.std(2, unbiased=False).mean(1)  # B×H×W, colour spread of the window
    neighbours = _windows(scores, size, dilation)  # B×K×O×H×W
    mu = neighbours.mean(2)  # B×K×H×W
    logits = -difference[:, None] / (sigma[:, None, None] + eps) * mu[:, :, None]
    return (torch.softmax(logits, dim=2) * neighbours).sum(2)


@dataclass(frozen=True)
class PACRefiner:
    """The paper's layer stack over softmax scores (at the scores' resolution: the paper's strides of 2 in the
    first four layers would shrink the map the pseudo-masks are read from, so every layer runs at stride 1)."""

    kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    dilations: tuple[int, ...] = DILATIONS

    def __post_init__(self) -> None:
        if len(self.kernel_sizes) != len(self.dilations):
            raise ValueError("PAC refiner: one dilation per kernel size")
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes) or any(d < 1 for d in self.dilations):
            raise ValueError("PAC refiner: kernel sizes must be odd and positive, dilations positive")

    @torch.no_grad()
    def __call__(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Refined ``B×K×h×w`` probabilities; ``image`` ``B×3×H×W`` uint8 or [0, 1], resized to the scores."""
        image = image.float()
        if image.max() > 1.0:
            image = image / 255.0
        if image.shape[-2:] != probs.shape[-2:]:
            image = F.interpolate(image, size=probs.shape[-2:], mode="bilinear", align_corners=False)
        out = probs.float()
        for size, dilation in zip(self.kernel_sizes, self.dilations, strict=True):
            out = pac_layer(out, image, size, dilation)
        return out.to(probs.dtype)
