"""Regularized losses for weakly-supervised segmentation (Tang et al., CVPR'18 and ECCV'18; the lecture's eqs.).

* :class:`DenseCRFLoss` — the quadratic relaxation of the Potts model, ``−Σ_k S_kᵀ W S_k`` per image.
* :class:`NormalizedCutLoss` — ``Σ_k S_kᵀ W (1 − S_k) / (dᵀ S_k)`` with ``d = W·1``, normalised per class.
* :class:`EntropyLoss` — mean pixel entropy ``−Σ_k S_k log S_k``.

``W`` is the dense Gaussian bilateral kernel ``exp(−|x_p−x_q|²/2σ_xy² − |I_p−I_q|²/2σ_rgb²)`` over all pixel pairs
(``kernel="permutohedral"``, approximate and linear-time, or ``"exact"``), or the same kernel restricted to a
``window × window`` neighbourhood (``"local"``, the Gated CRF loss). The losses take the class scores (softmax
probabilities, or logits with ``from_logits=True``) at any resolution, the ``B×3×H×W`` image on the 0–255 scale and
an optional region-of-interest mask (``B×H×W``, 0 on padding). As in the reference code (``DenseCRFLoss.py``), the
filtering runs at ``floor(size · scale_factor)`` with σ_xy scaled by the same factor: the image and the ROI are
shrunk by nearest-neighbour sampling, the scores bilinearly. ``W`` is never differentiated: since it is symmetric,
``∂(SᵀWS)/∂S = 2·W·S`` comes from the one filtering of the forward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.ops.bilateral import dense_gaussian_filter, local_gaussian_filter, pixel_features

KERNELS = ("permutohedral", "exact", "local")
# Our filters approximate the Gaussian sum itself (peak 1); the reference's C++ lattice returns about 1/1.80 of it
# (measured against that code on identical inputs: our loss was 1.80× the reference's at the same weight).
# DenseCRFLoss scales W by this, so that its ``weight`` is in the reference's units (2e-9 means what it means there).
REFERENCE_KERNEL_HEIGHT = 1 / 1.80


class BilateralKernel(nn.Module):
    """The kernel the regularized losses share: resizing to the filtering scale, then ``W·S`` without gradient."""

    def __init__(
        self,
        sigma_rgb: float = 15.0,
        sigma_xy: float = 100.0,
        scale_factor: float = 0.5,
        kernel: str = "permutohedral",
        window: int = 11,
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel '{kernel}' (use {', '.join(KERNELS)})")
        if not 0 < scale_factor <= 1:
            raise ValueError(f"scale_factor must be in (0, 1], got {scale_factor}")
        self.sigma_rgb, self.sigma_xy, self.scale_factor = sigma_rgb, sigma_xy, scale_factor
        self.kernel, self.window = kernel, window

    def prepare(
        self, scores: torch.Tensor, image: torch.Tensor, roi: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores, image and ROI at ``floor(size · scale_factor)``: the image and ROI by nearest-neighbour sampling,
        the scores bilinearly (the reference's resizing); scores are zeroed outside the ROI."""
        h, w = image.shape[-2:]
        size = (max(1, math.floor(h * self.scale_factor)), max(1, math.floor(w * self.scale_factor)))
        image = image.float()
        if size != (h, w):
            image = F.interpolate(image, size=size, mode="nearest")
        if scores.shape[-2:] != size:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        roi = torch.ones_like(image[:, 0]) if roi is None else resize_roi(roi, size)
        return scores.float() * roi[:, None], image, roi

    def apply(self, values: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``W·V`` for ``values`` ``B×C×h×w`` at the filtering resolution (no gradient flows through)."""
        sigma_xy = self.sigma_xy * self.scale_factor
        # Lattice coordinates must stay float32 under mixed precision.
        with torch.no_grad(), torch.autocast(values.device.type, enabled=False):
            if self.kernel == "local":
                return local_gaussian_filter(values, image, sigma_xy, self.sigma_rgb, self.window)
            b, c, h, w = values.shape
            features = pixel_features(image, (h, w), sigma_xy, self.sigma_rgb)
            flat = values.detach().flatten(2).transpose(1, 2)
            filtered = dense_gaussian_filter(features, flat, self.kernel)
            return filtered.transpose(1, 2).reshape(b, c, h, w)


def resize_roi(roi: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``B×H×W`` region-of-interest mask as float at ``size`` (nearest neighbour: no new values)."""
    if roi.shape[-2:] == size:
        return roi.float()
    return F.interpolate(roi[:, None].float(), size=size, mode="nearest")[:, 0]


def _probabilities(scores: torch.Tensor, from_logits: bool) -> torch.Tensor:
    return torch.softmax(scores.float(), dim=1) if from_logits else scores


def symmetric_quadratic(values: torch.Tensor, filtered: torch.Tensor) -> torch.Tensor:
    """``Σ values·filtered`` per image and channel (``B×C``) with the gradient ``2·filtered`` of ``vᵀWv``.

    ``filtered`` is ``W·values`` for a symmetric ``W`` computed without gradient: the value is ``vᵀWv`` and the
    gradient with respect to ``values`` is ``2·W·v``, the exact derivative of the quadratic form.
    """
    return ((2 * values - values.detach()) * filtered).flatten(2).sum(-1)


class DenseCRFLoss(nn.Module):
    """``weight · (−Σ_k S_kᵀ (h·W) S_k) / B`` (the lecture's Potts relaxation; reference weight 2e-9 at scale 0.5).

    ``h`` (``kernel_height``) is the height of the reference's lattice kernel, so that ``weight`` is in its units;
    ``kernel_height=1`` gives the plain Gaussian kernel.
    """

    def __init__(
        self,
        weight: float = 2e-9,
        sigma_rgb: float = 15.0,
        sigma_xy: float = 100.0,
        scale_factor: float = 0.5,
        kernel: str = "permutohedral",
        window: int = 11,
        from_logits: bool = False,
        kernel_height: float = REFERENCE_KERNEL_HEIGHT,
    ) -> None:
        super().__init__()
        self.weight, self.from_logits, self.kernel_height = weight, from_logits, kernel_height
        self.kernel = BilateralKernel(sigma_rgb, sigma_xy, scale_factor, kernel, window)

    def forward(self, scores: torch.Tensor, image: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
        probs, image, _ = self.kernel.prepare(_probabilities(scores, self.from_logits), image, roi)
        return self.from_filtered(probs, self.kernel.apply(probs, image))

    def from_filtered(self, probs: torch.Tensor, filtered: torch.Tensor) -> torch.Tensor:
        """The loss from prepared ``probs`` and ``W·probs`` (for callers that filter once for several losses)."""
        return -self.weight * self.kernel_height * symmetric_quadratic(probs, filtered).sum() / probs.shape[0]


class NormalizedCutLoss(nn.Module):
    """``weight · Σ_k S_kᵀ W (1 − S_k) / (dᵀ S_k)``, ``d = W·1``, per image and averaged (Tang et al., CVPR'18).

    Each class has its own denominator (its association ``dᵀS_k``); padding outside the ROI is left out of ``d``.
    """

    def __init__(
        self,
        weight: float = 1.0,
        sigma_rgb: float = 15.0,
        sigma_xy: float = 100.0,
        scale_factor: float = 0.5,
        kernel: str = "permutohedral",
        window: int = 11,
        from_logits: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.weight, self.from_logits, self.eps = weight, from_logits, eps
        self.kernel = BilateralKernel(sigma_rgb, sigma_xy, scale_factor, kernel, window)

    def forward(self, scores: torch.Tensor, image: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
        probs, image, roi = self.kernel.prepare(_probabilities(scores, self.from_logits), image, roi)
        return self.from_filtered(probs, self.kernel.apply(torch.cat([probs, roi[:, None]], dim=1), image))

    def from_filtered(self, probs: torch.Tensor, filtered: torch.Tensor) -> torch.Tensor:
        """The loss from prepared ``probs`` and ``W·[probs, roi]`` (K+1 channels: the last one is ``d``)."""
        association = symmetric_quadratic(probs, filtered[:, :-1])  # S_kᵀ W S_k, B×K
        volume = (probs * filtered[:, -1:]).flatten(2).sum(-1)  # d ᵀ S_k
        cut = volume - association  # S_kᵀ W (1 − S_k) inside the ROI
        return self.weight * (cut / (volume + self.eps)).sum(1).mean()


class EntropyLoss(nn.Module):
    """``weight ·`` mean over (ROI) pixels of ``−Σ_k S_k log S_k`` (the lecture's entropy regulariser)."""

    def __init__(self, weight: float = 1.0, from_logits: bool = False, eps: float = 1e-8) -> None:
        super().__init__()
        self.weight, self.from_logits, self.eps = weight, from_logits, eps

    def forward(self, scores: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
        if self.from_logits:
            log_probs = torch.log_softmax(scores.float(), dim=1)
            entropy = -(log_probs.exp() * log_probs).sum(1)
        else:
            entropy = -(scores * torch.log(scores.clamp_min(self.eps))).sum(1)
        if roi is None:
            return self.weight * entropy.mean()
        roi = resize_roi(roi, tuple(entropy.shape[-2:]))
        return self.weight * (entropy * roi).sum() / roi.sum().clamp_min(1.0)
