"""Random walk of class scores along feature affinities (AffinityNet, Ahn & Kwak CVPR 2018; IRN, Ahn et al. CVPR
2019; SPML, Ke et al. ICLR 2021 at inference).

One convention throughout, the references': ``A`` symmetric, ``T = A / colsum(A)``, scores as rows, ``S ← S·T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.pseudo.cam import max_normalise
from weakseg.pseudo.refiners import CamRefiner, register_refiner, within


def negligible(dtype: torch.dtype) -> float:
    """``√tiny`` of a float dtype (``tiny``: its smallest normal number; ≈1e-19 in float32): the walk drops entries
    below it, so that a product of two kept entries is never subnormal.

    Subnormal floats are many times slower to multiply on CPUs, and ``exp(γβ(cos − 1))`` and its products make many
    of them: on trained SPML embeddings the walk took 10× longer. What is dropped moves a walked probability by less
    than ``N·√tiny`` (1e-15 for 10⁴ pixels), far below float32's resolution.
    """
    return math.sqrt(torch.finfo(dtype).tiny)


def drop_negligible(x: Tensor) -> Tensor:
    """``x`` with its entries below :func:`negligible` in magnitude set to 0."""
    return x.masked_fill(x.abs() < negligible(x.dtype), 0.0)


def exp_affinity(exponent: Tensor) -> Tensor:
    """``exp`` of ``γβ(cos − 1)``, in place, with 0 where it would be negligible (never computed as a subnormal)."""
    return exponent.masked_fill_(exponent < math.log(negligible(exponent.dtype)), -math.inf).exp_()


def affinity(embeddings: Tensor, gamma: float = 5.0, beta: float = 20.0, valid: Tensor | None = None) -> Tensor:
    """Dense ``B×N×N`` affinities ``(exp(γ(cos − 1)))^β`` between the ``N = h·w`` pixels of ``B×D×h×w`` embeddings.

    Computed as ``exp(γβ(cos − 1))``, the same number with one rounding; :func:`negligible` entries are 0. The diagonal
    is exactly 1 (also for a zero embedding), pairs with a pixel outside ``valid`` (``B×h×w``) are 0: an invalid pixel
    links only to itself.
    """
    unit = F.normalize(embeddings.flatten(2), dim=1)
    aff = exp_affinity(torch.bmm(unit.transpose(1, 2), unit).sub_(1).mul_(gamma * beta))
    if valid is not None:
        inside = valid.flatten(1).to(aff.dtype)
        aff = aff * inside[:, :, None] * inside[:, None, :]
    aff.diagonal(dim1=1, dim2=2).fill_(1.0)
    return aff


def transition(aff: Tensor) -> Tensor:
    """Column-normalised transitions ``T_ij = A_ij / Σ_i A_ij`` (every column sums to 1), :func:`negligible` entries
    dropped."""
    return drop_negligible(aff / aff.sum(-2, keepdim=True))


def walk(scores: Tensor, trans: Tensor, log2_steps: int, squaring: bool | None = None) -> Tensor:
    """``scores · T^t`` with ``t = 2**log2_steps`` for ``K×N`` scores and an ``N×N`` transition matrix.

    ``squaring``: ``True`` squares ``T`` ``log2_steps`` times (≈ ``log2_steps·N³`` multiply-adds), ``False`` multiplies
    the scores by ``T`` ``t`` times (≈ ``t·N²·K``), ``None`` takes the cheaper. Every product drops its
    :func:`negligible` entries.
    """
    n, k, steps = trans.shape[-1], scores.shape[0], 2**log2_steps
    if squaring is None:
        squaring = log2_steps * n < steps * k
    scores = drop_negligible(scores)
    if squaring:
        for _ in range(log2_steps):
            trans = drop_negligible(trans @ trans)
        return scores @ trans
    for _ in range(steps):
        scores = drop_negligible(scores @ trans)
    return scores


def window_radii(radius: int, h: int, w: int) -> tuple[int, int]:
    """The vertical and horizontal window radii for an ``h×w`` map: ``radius``, capped at ``h − 1`` and ``w − 1``."""
    return min(radius, h - 1), min(radius, w - 1)


def window_offsets(ry: int, rx: int) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` offsets with ``|dy| ≤ ry`` and ``|dx| ≤ rx``, row by row."""
    return [(dy, dx) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)]


def window_affinity(embeddings: Tensor, gamma: float, beta: float, radius: int, valid: Tensor | None = None) -> Tensor:
    """Affinities of every pixel to its neighbours within ``radius`` (``|dy|, |dx| ≤ R``), as ``B×O×h×w`` maps.

    Map ``o`` holds ``A(p, p + offset_o)`` (offsets as :func:`window_offsets` of :func:`window_radii`), 0 where
    ``p + offset_o`` leaves the image: the entries of :func:`affinity` within the window.
    """
    b, _, h, w = embeddings.shape
    ry, rx = window_radii(radius, h, w)
    unit = F.normalize(embeddings, dim=1)
    inside = torch.ones(b, h, w, dtype=unit.dtype, device=unit.device) if valid is None else valid.to(unit.dtype)
    unit_pad, inside_pad = F.pad(unit, [rx, rx, ry, ry]), F.pad(inside, [rx, rx, ry, ry])
    maps = []
    for dy, dx in window_offsets(ry, rx):
        if (dy, dx) == (0, 0):
            maps.append(torch.ones_like(inside))
            continue
        cos = (unit * unit_pad[..., ry + dy : ry + dy + h, rx + dx : rx + dx + w]).sum(1)
        pair = inside * inside_pad[..., ry + dy : ry + dy + h, rx + dx : rx + dx + w]
        maps.append(exp_affinity(cos.sub_(1).mul_(gamma * beta)) * pair)
    return torch.stack(maps, 1)


def window_walk(scores: Tensor, aff: Tensor, radius: int, steps: int) -> Tensor:
    """``steps`` column-normalised transitions of ``B×K×h×w`` scores along :func:`window_affinity` maps.

    ``A`` is symmetric, so column ``j`` of ``A`` is pixel ``j``'s own map and each step is
    ``s_j ← Σ_o A(j, j + o) s_{j+o} / Σ_o A(j, j + o)``: one shifted view of the scores per offset.
    """
    h, w = scores.shape[2:]
    ry, rx = window_radii(radius, h, w)
    weights = drop_negligible(aff / aff.sum(1, keepdim=True))
    scores = drop_negligible(scores)
    for _ in range(steps):
        padded = F.pad(scores, [rx, rx, ry, ry])
        scores = torch.zeros_like(scores)
        for o, (dy, dx) in enumerate(window_offsets(ry, rx)):
            scores.addcmul_(weights[:, o : o + 1], padded[..., ry + dy : ry + dy + h, rx + dx : rx + dx + w])
        scores = drop_negligible(scores)
    return scores


@dataclass(frozen=True)
class RandomWalk:
    """Scores diffused along feature affinities: T = column-normalised (exp(γ(cos−1)))^β, scores ← scores·T^t.

    ``t = 2**log2_steps``; the defaults are SPML's inference (γ 5, β 20, T squared 6 times; AffinityNet/IRN use β 8–10
    on learned affinities). ``radius=None`` links every pair of pixels (``N×N`` per image; ``T^t`` by repeated squaring
    or by ``t`` products with the scores, whichever is cheaper); ``radius=R`` links only pixels with ``|dy|, |dx| ≤ R``
    (a square window; AffinityNet/IRN use a disc) and applies the ``t`` steps one offset at a time, which for
    ``R ≥ max(h, w)`` is the dense walk. Embeddings are L2-normalised here. Pixels outside ``valid`` neither send nor
    receive and keep their input scores. Per output pixel the result is a convex combination of input scores. No
    gradient; float64 inputs are walked in float64, everything else in float32. Score normalisation before the walk
    (SPML: CAMs divided by their max, absent classes zeroed) is the caller's.
    """

    gamma: float = 5.0  # affinity exp(γ(cosine − 1)) (SPML)
    beta: float = 20.0  # power on the affinity (SPML 20; AffinityNet/IRN 8–10)
    log2_steps: int = 6  # t = 2**log2_steps transitions (SPML: squared 6 times)
    radius: int | None = (
        None  # None: dense affinities between all pixels; R: only pairs within R pixels (|dy|,|dx| ≤ R)
    )

    def __post_init__(self) -> None:
        if self.log2_steps < 0:
            raise ValueError(f"random walk: log2_steps must be >= 0, got {self.log2_steps}")
        if self.radius is not None and self.radius < 0:
            raise ValueError(f"random walk: radius must be None or >= 0, got {self.radius}")

    def __call__(self, scores: Tensor, embeddings: Tensor, valid: Tensor | None = None) -> Tensor:
        """Walked ``B×K×h×w`` scores, from ``B×D×h×w`` embeddings and ``valid`` (``B×h×w`` bool)."""
        b, k, h, w = scores.shape
        if embeddings.dim() != 4 or embeddings.shape[0] != b or embeddings.shape[2:] != scores.shape[2:]:
            raise ValueError(f"random walk: embeddings {tuple(embeddings.shape)} do not match scores {(b, k, h, w)}")
        if valid is not None and valid.shape != (b, h, w):
            raise ValueError(f"random walk: valid {tuple(valid.shape)} does not match scores {(b, k, h, w)} (B×h×w)")
        dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        with torch.no_grad(), torch.autocast(scores.device.type, enabled=False):
            x, emb = scores.to(dtype), embeddings.to(dtype)
            if self.radius is not None:
                aff = window_affinity(emb, self.gamma, self.beta, self.radius, valid)
                return window_walk(x, aff, self.radius, 2**self.log2_steps).to(scores.dtype)
            out = torch.empty_like(x)
            for i in range(b):
                inside = None if valid is None else valid[i : i + 1]
                trans = transition(affinity(emb[i : i + 1], self.gamma, self.beta, inside)[0])
                out[i] = walk(x[i].reshape(k, h * w), trans, self.log2_steps).reshape(k, h, w)
        return out.to(scores.dtype)


@register_refiner("random_walk", reads_features=True)
def random_walk_refiner() -> CamRefiner:
    """CAM refinement by the random walk on the CAM model's features: the scores pooled to the features' grid,
    walked, upsampled, kept within the boxes' region and max-normalised."""
    walk = RandomWalk()

    def refine(scores: Tensor, image: Tensor, features: Callable[[], Tensor], region: Tensor | None) -> Tensor:
        embedding = features()
        walked = walk(F.adaptive_avg_pool2d(scores[None], embedding.shape[-2:]), embedding)
        upsampled = F.interpolate(walked, scores.shape[-2:], mode="bilinear", align_corners=False)[0]
        return max_normalise(within(upsampled, region))

    return refine
