"""Pixel-adaptive mask refinement, PAMR (Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels",
CVPR 2020, §3.2 and the 1-stage-wseg reference code).

Class scores are averaged over dilated 8-neighbourhoods with weights from local colour differences, a few times over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.pseudo.refiners import CamRefiner, register_refiner, within


def neighbour_offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` offsets of the 3×3 window minus its centre, for each dilation in turn (8 per dilation)."""
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return [(d * dy, d * dx) for d in dilations for dy, dx in ring]


def _shifted(padded: Tensor, pad: int, size: tuple[int, int], dy: int, dx: int) -> Tensor:
    """The view of ``padded`` (padded by ``pad`` on every side) whose pixel ``(y, x)`` holds ``(y + dy, x + dx)``."""
    h, w = size
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


@dataclass(frozen=True)
class PAMR:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020): ``m_i ← Σ_j a_ij m_j``, ``iterations`` times.

    The neighbours ``j`` of pixel ``i`` are the 8 pixels at offsets ``(±d, 0, ±d)`` for every dilation ``d`` (out of the
    image: the nearest border pixel, i.e. replicate padding), and ``a_ij`` is a softmax over all ``8·len(dilations)``
    of them of ``−mean_c |I_ic − I_jc| / (0.1·σ_ic + 1e-8)``. As in the reference's ``LocalStDev``, ``σ_ic`` is the
    sample (``n − 1``) standard deviation of channel ``c`` over the full 3×3 window at every dilation, pooled: ``9·D``
    values, the centre among them ``D`` times. Dividing by ``σ`` makes the affinity independent of each channel's
    scale, so the image may be in any range; it is computed once, from the image only.

    ``masks`` are ``B×K×H×W`` non-negative scores at the image's size (the reference first resizes them bilinearly to
    the image); each output pixel is a convex combination of input pixels, so per-pixel sums over ``K`` are kept. The
    ``8·D`` affinity maps are stored; the propagation walks one offset at a time over shifted views. No gradient flows
    through it (it makes pseudo labels); float64 inputs are refined in float64, everything else in float32.
    """

    iterations: int = 10
    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"PAMR: iterations must be >= 0, got {self.iterations}")
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"PAMR: dilations must be positive integers, got {self.dilations}")

    def __call__(self, masks: Tensor, image: Tensor) -> Tensor:
        """Refined ``B×K×H×W`` masks from ``masks`` and the ``B×C×H×W`` image (C = 3 colour channels, any range)."""
        if (
            masks.dim() != 4
            or image.dim() != 4
            or image.shape[0] != masks.shape[0]
            or image.shape[2:] != masks.shape[2:]
        ):
            raise ValueError(f"PAMR: image {tuple(image.shape)} does not match masks {tuple(masks.shape)} (B×·×H×W)")
        dtype = torch.float64 if masks.dtype == torch.float64 else torch.float32
        with torch.no_grad(), torch.autocast(masks.device.type, enabled=False):
            weights = self.affinity(image.to(dtype))
            refined = masks.to(dtype)
            offsets, pad, size = neighbour_offsets(self.dilations), max(self.dilations), masks.shape[2:]
            for _ in range(self.iterations):
                padded = F.pad(refined, [pad] * 4, mode="replicate")
                refined = torch.zeros_like(refined)
                for j, (dy, dx) in enumerate(offsets):
                    refined.addcmul_(weights[:, j : j + 1], _shifted(padded, pad, size, dy, dx))
        return refined.to(masks.dtype)

    def affinity(self, image: Tensor) -> Tensor:
        """The ``B×(8·D)×H×W`` neighbour weights ``a_ij`` (softmax over dim 1, ordered as :func:`neighbour_offsets`)."""
        pad, size = max(self.dilations), image.shape[2:]
        padded = F.pad(image, [pad] * 4, mode="replicate")
        window = [(d * dy, d * dx) for d in self.dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        mean = sum(_shifted(padded, pad, size, dy, dx) for dy, dx in window) / len(window)
        variance = sum((_shifted(padded, pad, size, dy, dx) - mean).square() for dy, dx in window) / (len(window) - 1)
        scale = 1.0 / (0.1 * variance.sqrt() + 1e-8)
        logits = [
            -((image - _shifted(padded, pad, size, dy, dx)).abs() * scale).mean(1)
            for dy, dx in neighbour_offsets(self.dilations)
        ]
        return torch.stack(logits, 1).softmax(1)


@register_refiner("pamr")
def pamr_refiner() -> CamRefiner:
    """CAM refinement by PAMR on the image's colours, within the boxes' region."""
    refine = PAMR()
    return lambda scores, image, features, region: within(refine(scores[None], image.float())[0], region)
