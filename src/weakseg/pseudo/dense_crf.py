"""Dense CRF post-processing (Krähenbühl & Koltun, NIPS 2011) by mean-field inference, as pydensecrf runs it.

One mechanism: the CRF's pairwise kernels are the same dense bilateral filter as the CRF loss
(:mod:`weakseg.ops.bilateral`), built once per call and applied to all classes at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from weakseg.ops.bilateral import PermutohedralLattice, exact_gaussian_filter, pixel_features

FILTERS = ("permutohedral", "exact")


@dataclass(frozen=True)
class DenseCRF:
    """Fully connected CRF with a Gaussian and a bilateral kernel and Potts compatibility, by mean field.

    With the unary ``U = −log max(P, min_prob)`` and ``Q⁰ = softmax(−U)``, every iteration updates (Krähenbühl &
    Koltun 2011, §3 and Algorithm 1, with pydensecrf's ``NORMALIZE_SYMMETRIC`` kernels)::

        Q ← softmax(−U + Σ_m w_m · K̂_m Q),   K̂_m = D_m^{−½} K_m D_m^{−½},   D_m = K_m · 1,
        K_1(p, q) = exp(−|x_p − x_q|²/2σ_xy²)                             (Gaussian, weight w_1)
        K_2(p, q) = exp(−|x_p − x_q|²/2σ_xy'² − |I_p − I_q|²/2σ_rgb²)      (bilateral, weight w_2)

    The kernels keep the self term ``q = p``, as pydensecrf's lattice does (the paper's sum leaves it out). Defaults
    are SPML's (DeepLab's): 10 iterations, Gaussian σ_xy 1 weight 3, bilateral σ_xy 67 σ_rgb 3 weight 4. ``filter``
    is ``"permutohedral"`` (linear time) or ``"exact"`` (all pairs, for small images and tests). Pixels outside
    ``valid`` keep their input probabilities and are left out of the kernels (of ``D`` too). The one departure from
    pydensecrf: its C++ lattice is replaced by :class:`~weakseg.ops.bilateral.PermutohedralLattice` (symmetric, both
    blur orders), so results agree with pydensecrf up to the two lattices' approximation; the normalisation cancels
    the overall scale.
    """

    iterations: int = 10
    gaussian_sigma_xy: float = 1.0
    gaussian_weight: float = 3.0
    bilateral_sigma_xy: float = 67.0
    bilateral_sigma_rgb: float = 3.0
    bilateral_weight: float = 4.0
    filter: str = "permutohedral"
    min_prob: float = 1e-5  # pydensecrf's unary_from_softmax clip

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"dense CRF: iterations must be >= 0, got {self.iterations}")
        if self.filter not in FILTERS:
            raise ValueError(f"dense CRF: unknown filter '{self.filter}' (use {' or '.join(FILTERS)})")

    def __call__(self, probs: Tensor, image: Tensor, valid: Tensor | None = None) -> Tensor:
        """Refined ``B×K×H×W`` probabilities from ``probs``, the ``B×3×H×W`` image (0–255) and ``valid`` (``B×H×W``)."""
        b, k, h, w = probs.shape
        if image.shape != (b, 3, h, w) or (valid is not None and valid.shape != (b, h, w)):
            raise ValueError(f"dense CRF: image (B×3×H×W) or valid (B×H×W) does not match probs {tuple(probs.shape)}")
        with torch.no_grad(), torch.autocast(probs.device.type, enabled=False):
            inside = torch.ones(b, h * w, 1, device=probs.device) if valid is None else valid.reshape(b, -1, 1).float()
            gaussian = pixel_features(image, (h, w), self.gaussian_sigma_xy, None)
            bilateral = pixel_features(image, (h, w), self.bilateral_sigma_xy, self.bilateral_sigma_rgb)
            kernels = [
                self._kernel(gaussian, inside, self.gaussian_weight),
                self._kernel(bilateral, inside, self.bilateral_weight),
            ]
            minus_unary = probs.float().flatten(2).transpose(1, 2).clamp(min=self.min_prob).log()
            q = minus_unary.softmax(-1)
            for _ in range(self.iterations):
                q = (minus_unary + sum(kernel(q) for kernel in kernels)).softmax(-1)
            refined = q.transpose(1, 2).reshape(b, k, h, w).to(probs.dtype)
        return refined if valid is None else torch.where(valid[:, None], refined, probs)

    def _kernel(self, features: Tensor, inside: Tensor, weight: float) -> Callable[[Tensor], Tensor]:
        """``Q ↦ w · D^{−½} K D^{−½} Q`` over the pixels ``inside`` (``B×N×1``), with its lattice built once."""
        apply = self._filter(features)
        scale = inside * apply(inside).clamp(min=1e-20).rsqrt()  # D^{−½}, zero outside
        return lambda q: weight * scale * apply(q * scale)

    def _filter(self, features: Tensor) -> Callable[[Tensor], Tensor]:
        """``V ↦ K·V``: the lattice (built here, once), or the sum over all pairs."""
        if self.filter == "permutohedral":
            return PermutohedralLattice(features).filter
        return lambda values: exact_gaussian_filter(features, values)
