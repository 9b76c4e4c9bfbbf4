"""CAM losses of the binomial ISL/FSL paper (Jonnarth et al., papers/hfpl-binomial-isl-fsl.txt).

* :func:`max_normalised_cam` — ``r_c = ReLU(s_c) / max ReLU(s_c)`` per image and class (eq. 4).
* :class:`ImportanceSamplingLoss` — ``(1−λ)·L_GAP + λ·L_IS^N`` (eqs. 14–18): the GAP BCE mixed with the BCE of pixel
  logits drawn from ``p_c ∝ sigmoid(s_c)``.
* :func:`minmax_normalised_cam` — the reference code's ``relu(ReLU(s_c) − min − ε) / (max − min + ε)``.
* :class:`FeatureSimilarityLoss` — ``−(1/HW) Σ_ij w_ij g(r_i, r_j) f(δ_ij)`` (eqs. 9–13) on the normalised CAM of
  the classes present in the image and, as the reference code, a background channel ``1 − max_c r_c``.
* :class:`EquivarianceLoss` — SEAM's L1 between the CAMs of an image and of its rescaled copy (the base PPC builds on).

The losses take the ``B×C×h×w`` class scores (logits) and an optional ``B×h×w`` valid-pixel mask at the CAM size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.losses.regularized import symmetric_quadratic
from weakseg.utils import compute_dtype


def _check_valid(valid: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor | None:
    if valid is None:
        return None
    b, _, h, w = scores.shape
    if valid.shape != (b, h, w):
        raise ValueError(f"valid must be {b}×{h}×{w} (B×h×w of the scores), got {tuple(valid.shape)}")
    return valid.bool()


def max_normalised_cam(scores: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``r_c = ReLU(s_c) / max(max ReLU(s_c), eps)`` per image and class (HFPL eq. 4), ``B×C×h×w``.

    The max runs over the valid pixels only and ``r`` is 0 outside them; a class with no positive score is all 0.
    Gradients flow through the ReLU and the normaliser (no detach).
    """
    valid = _check_valid(valid, scores)
    cam = F.relu(scores.to(compute_dtype(scores)))
    if valid is not None:
        cam = cam * valid[:, None]
    peak = cam.flatten(2).amax(-1).clamp_min(eps)
    return cam / peak[..., None, None]


def sample_positions(
    scores: torch.Tensor,
    samples: int,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``samples`` flat pixel indices per image and class (``B×C×N``, long), drawn with replacement from
    ``p_c ∝ sigmoid(s_c)`` over the valid pixels (HFPL eq. 15), without gradient; ``generator`` goes to
    ``torch.multinomial``.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    valid = _check_valid(valid, scores)
    b, c, h, w = scores.shape
    with torch.no_grad():
        # softmax(log sigmoid(s)) = sigmoid(s) / Σ sigmoid(s), without underflow for very negative logits.
        log_b = F.logsigmoid(scores.detach().to(compute_dtype(scores))).flatten(2)
        if valid is not None:
            if not valid.flatten(1).any(1).all():
                raise ValueError("every image needs at least one valid pixel to sample from")
            log_b = log_b.masked_fill(~valid.flatten(1)[:, None], -math.inf)
        probs = torch.softmax(log_b, dim=-1).reshape(b * c, h * w)
        positions = torch.multinomial(probs, samples, replacement=True, generator=generator)
    return positions.reshape(b, c, samples)


class ImportanceSamplingLoss(nn.Module):
    """``L_cls = (1−λ)·L_GAP + λ·L_IS^N`` (HFPL eqs. 14–18): binomial importance sampling of pixel logits.

    ``L_GAP`` is the BCE of the (valid-)average-pooled logits against the tags (eqs. 3, 17), ``L_IS^N`` the same BCE
    on the logits at ``samples`` pixels per image and class drawn from ``p_c ∝ sigmoid(s_c)`` (eqs. 15, 18), averaged
    over samples, classes and batch. The draw is not differentiated: the gradient flows through the gathered logits.
    """

    def __init__(self, samples: int = 10, lam: float = 0.2) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.samples, self.lam = samples, lam

    def forward(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        b, c = scores.shape[:2]
        if labels.shape != (b, c):
            raise ValueError(f"labels must be {b}×{c} (B×C of the scores), got {tuple(labels.shape)}")
        valid = _check_valid(valid, scores)
        scores = scores.to(compute_dtype(scores))
        labels = labels.to(scores.dtype)
        loss = scores.new_zeros(())
        if self.lam < 1.0:
            loss = loss + (1.0 - self.lam) * self.gap_loss(scores, labels, valid)
        if self.lam > 0.0:
            positions = sample_positions(scores, self.samples, valid, generator)
            picked = scores.flatten(2).gather(2, positions)  # B×C×N logits at the drawn pixels
            target = labels[:, :, None].expand_as(picked)
            loss = loss + self.lam * F.binary_cross_entropy_with_logits(picked, target)
        return loss

    @staticmethod
    def gap_loss(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``L_GAP``: multilabel soft-margin loss of the scores averaged over the (valid) pixels (eqs. 3, 17)."""
        if valid is None:
            pooled = scores.mean((2, 3))
        else:
            mask = valid[:, None].to(scores.dtype)
            pooled = (scores * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1.0)
        return F.multilabel_soft_margin_loss(pooled, labels)


def minmax_normalised_cam(scores: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``relu(ReLU(s_c) − min − ε) / (max − min + ε)`` per image and class, min and max of ``ReLU(s_c)`` over the
    valid pixels, 0 outside them: the CAM normalisation of the HFPL and SEAM reference code (``max_norm``)."""
    valid = _check_valid(valid, scores)
    cam = F.relu(scores.to(compute_dtype(scores)))
    flat = cam.flatten(2)
    if valid is None:
        low, high = flat.amin(-1), flat.amax(-1)
    else:
        inside = valid.flatten(1)[:, None]
        low = flat.masked_fill(~inside, math.inf).amin(-1)
        high = flat.masked_fill(~inside, -math.inf).amax(-1)
    r = F.relu(cam - low[..., None, None] - eps) / (high - low + eps)[..., None, None]
    return r if valid is None else r * valid[:, None]


NORMALISATIONS = {"max": max_normalised_cam, "minmax": minmax_normalised_cam}


class FeatureSimilarityLoss(nn.Module):
    """``L_FS = −(1/HW) Σ_ij w_ij g(r_i, r_j) f(δ_ij)`` (HFPL eqs. 9–13), gating on the normalised CAM r.

    ``r`` is the CAM of the classes present in the image (absent classes are masked out), normalised per class as
    ``normalise`` says — ``"minmax"`` (the reference code's) or ``"max"`` (the paper's eq. 4) — and, with
    ``background`` (the reference code's), one more channel ``1 − max_c r_c``; without it the term is about 0.6× as
    strong. ``w_ij`` is the Gaussian of the pixel distance (σ in CAM pixels, eq. 10), ``g = ½‖r_i − r_j‖²`` over the
    channels of ``r`` (eq. 11), ``f = tanh(μ + logit δ)`` with ``δ = ‖x_i − x_j‖₁/3``
    (eqs. 12–13). The sum runs over ordered pairs of valid pixels and is divided by the number of valid pixels, then
    averaged over the batch. ``window=None`` sums all pairs (in row chunks of ``chunk`` pixels, O(chunk·HW) memory);
    ``window=R`` only pairs with ``|dy|, |dx| ≤ R`` (one shifted offset at a time, O(HW·C) memory).

    With ``M = w⊙f`` (symmetric, no gradient) and ``m = M·1``, ``Σ_ij M_ij g_ij = Σ_i m_i‖r_i‖² − Σ_c r_cᵀ M r_c``:
    only ``m`` and ``M r`` are computed (without gradient), and the quadratic term gets its exact gradient ``2·M r``.
    """

    def __init__(
        self,
        mu: float = 2.5,
        sigma: float = 5.0,
        window: int | None = None,
        chunk: int = 4096,
        normalise: str = "minmax",
        background: bool = True,
    ) -> None:
        super().__init__()
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if window is not None and window < 0:
            raise ValueError(f"window must be None or >= 0, got {window}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.mu, self.sigma, self.window, self.chunk = mu, sigma, window, chunk
        self.normalise, self.background = normalise, background

    def forward(
        self,
        scores: torch.Tensor,
        image: torch.Tensor,
        present: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, h, w = scores.shape
        if image.shape != (b, 3, h, w):
            raise ValueError(f"image must be {b}×3×{h}×{w} (RGB at the CAM size), got {tuple(image.shape)}")
        if present.shape != (b, c):
            raise ValueError(f"present must be {b}×{c} (B×C of the scores), got {tuple(present.shape)}")
        valid = _check_valid(valid, scores)
        r = NORMALISATIONS[self.normalise](scores, valid) * present.to(compute_dtype(scores))[:, :, None, None]
        mask = torch.ones_like(r[:, 0]) if valid is None else valid.to(r.dtype)
        if self.background:
            r = torch.cat([r, (1 - r.amax(1, keepdim=True)) * mask[:, None]], dim=1)
        with torch.no_grad(), torch.autocast(r.device.type, enabled=False):
            image = image.detach().to(r.dtype)
            if self.window is None:
                degree, filtered = self._dense(r.detach(), image, mask)
            else:
                degree, filtered = self._local(r.detach(), image, mask)
        pairs = (degree[:, None] * r.square()).flatten(2).sum(-1) - symmetric_quadratic(r, filtered)  # B×C
        return -(pairs.sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)).mean()

    def _dissimilarity(self, l1: torch.Tensor) -> torch.Tensor:
        """``f(δ) = tanh(μ + log(δ/(1−δ)))``, ``δ = l1/3`` clamped to ``[1e-6, 1−1e-6]`` (eqs. 12–13), reusing ``l1``.

        Computed without transcendental functions as ``±(1 − t²)/(1 + t²)`` with ``t = e^{−|μ|}·odds^{∓1}`` (``odds
        = δ/(1−δ)``, upper signs for μ ≥ 0), which is ``tanh`` exactly and keeps ``t ≤ 1e6`` for any μ.
        """
        t = l1.div_(3).clamp_(1e-6, 1 - 1e-6).reciprocal_().sub_(1)  # (1−δ)/δ
        if self.mu < 0:
            t.reciprocal_()
        t2 = t.mul_(math.exp(-abs(self.mu))).square_()
        f = torch.sub(1, t2).div_(t2.add_(1))
        return f if self.mu >= 0 else f.neg_()

    def _dense(self, r: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``m = M·1`` (``B×h×w``) and ``M·r`` (``B×C×h×w``) over all pixel pairs, ``chunk`` rows of ``M`` at a time."""
        b, c, h, w = r.shape
        n = h * w
        ys, xs = torch.meshgrid(
            torch.arange(h, device=r.device, dtype=r.dtype),
            torch.arange(w, device=r.device, dtype=r.dtype),
            indexing="ij",
        )
        ys, xs = ys.reshape(n), xs.reshape(n)
        colours = image.flatten(2).transpose(1, 2).contiguous()  # B×n×3
        values = r.flatten(2).transpose(1, 2)  # B×n×C
        flat_mask = mask.flatten(1)  # B×n
        degree, filtered = r.new_empty(b, n), r.new_empty(b, n, c)
        for start in range(0, n, self.chunk):
            rows = slice(start, min(start + self.chunk, n))
            squared = (ys[rows, None] - ys[None]).square() + (xs[rows, None] - xs[None]).square()  # k×n
            weights = torch.exp(-squared / (2 * self.sigma**2)) / (2 * math.pi * self.sigma**2)  # eq. 10
            weights = weights.masked_fill(squared == 0, 0.0)  # i = j: g = 0, left out against cancellation
            pair = self._dissimilarity(torch.cdist(colours[:, rows], colours, p=1))  # B×k×n
            pair.mul_(weights).mul_(flat_mask[:, rows, None]).mul_(flat_mask[:, None])
            degree[:, rows] = pair.sum(-1)
            filtered[:, rows] = torch.bmm(pair, values)
        return degree.reshape(b, h, w), filtered.transpose(1, 2).reshape(b, c, h, w)

    def _local(self, r: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` and ``M·r`` over the pairs within ``|dy|, |dx| ≤ window``, one offset at a time on padded views."""
        _, _, h, w = r.shape
        ry, rx = min(self.window, h - 1), min(self.window, w - 1)
        pad = (rx, rx, ry, ry)
        r_pad, image_pad = F.pad(r, pad), F.pad(image, pad)
        mask_pad = F.pad(mask, pad)  # out of bounds counts as invalid
        degree, filtered = torch.zeros_like(mask), torch.zeros_like(r)
        for dy in range(-ry, ry + 1):
            for dx in range(-rx, rx + 1):
                if dy == 0 and dx == 0:
                    continue
                view = (slice(None), slice(None), slice(ry + dy, ry + dy + h), slice(rx + dx, rx + dx + w))
                l1 = (image - image_pad[view]).abs().sum(1)  # B×h×w
                weight = math.exp(-(dy * dy + dx * dx) / (2 * self.sigma**2)) / (2 * math.pi * self.sigma**2)
                pair = self._dissimilarity(l1).mul_(weight).mul_(mask).mul_(mask_pad[view[0], view[2], view[3]])
                degree += pair
                filtered += pair[:, None] * r_pad[view]
        return degree, filtered


class EquivarianceLoss(nn.Module):
    """SEAM's equivariant regularisation ``‖A(r^o) − r^t‖₁`` (Wang et al. 2020, eq. 2) for a rescaled second view.

    ``source`` (``B×C×H×W``) are the CAM scores of the image, ``target`` (``B×C×h×w``) those of its rescaled copy;
    ``A`` resizes the source's max-normalised CAMs (HFPL eq. 4, one normalisation for every CAM loss) bilinearly to
    the target's grid. The L1 difference of the present classes is averaged over the batch, the classes and the
    target's valid pixels; gradients flow into both views.
    """

    def forward(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        present: torch.Tensor,
        valid_source: torch.Tensor | None = None,
        valid_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, h, w = target.shape
        if source.shape[:2] != (b, c):
            raise ValueError(f"source must be {b}×{c}×H×W (B×C of the target), got {tuple(source.shape)}")
        if present.shape != (b, c):
            raise ValueError(f"present must be {b}×{c} (B×C of the scores), got {tuple(present.shape)}")
        moved = F.interpolate(max_normalised_cam(source, valid_source), (h, w), mode="bilinear", align_corners=False)
        diff = (moved - max_normalised_cam(target, valid_target)).abs() * present.to(moved.dtype)[:, :, None, None]
        if valid_target is None:
            return diff.mean()
        mask = _check_valid(valid_target, target).to(diff.dtype)[:, None]
        return (diff * mask).sum() / (mask.sum() * c).clamp_min(1.0)
