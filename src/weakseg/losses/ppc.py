"""Pixel-to-prototype contrast (Du et al., PPC, papers/ppc-pixel-to-prototype-contrast.txt).

* :func:`cam_assignments` — pseudo-labels ``y = argmax`` of the normalised CAMs of the present classes with a
  constant background score (§3.2), and each pixel's confidence in its class.
* :func:`estimate_prototypes` — ``p_c`` = confidence-weighted mean of the (detached) embeddings of the top-K pixels
  of class ``c`` over the whole batch (every process's under torchrun), L2-normalised (eq. 5).
* :func:`prototype_contrast` — ``F(v_i; y_i; P) = −log softmax_c(v_i·p_c/τ)[y_i]`` (eq. 4), optionally over the
  positive and the semi-hard negatives only (prototype mining, §3.5).
* :func:`hard_pixel_weights` — per class, a random half of its pixels plus its 10%–60% least similar (§3.5).
* :class:`PixelPrototypeContrastLoss` — ``α·L_cross + β·L_intra`` (eqs. 1, 6–9) for two views on one grid, returned
  with its terms (:class:`ContrastTerms`).

Classes are indexed ``0..C−1`` for the foreground score maps the caller passes and ``C`` for the background.

Two objectives (``PixelPrototypeContrastLoss(objective=…)``): ``"reference"``, what the authors' code computes
(``contrast_train.py``; METHODS.md §3) — CAMs min-max normalised; every class has a prototype, from the top-K pixels
of its CAM over the whole batch (absent classes too, any pixel, not only those labelled with the class), the
background's from K pixels at its constant score; semi-hard mining ranks all prototypes, the positive included;
hard pixel sampling averages over every class with a pixel — and ``"present"``, this package's first reading of the
paper: max-normalised CAMs, prototypes of the classes with assigned pixels only, from those pixels, mining among
the negatives, classes with fewer than 2 pixels left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.distributed import gather_rows
from weakseg.losses.cam import max_normalised_cam, minmax_normalised_cam
from weakseg.utils import compute_dtype

IGNORE = -1
OBJECTIVES = ("reference", "present")


def cam_assignments(
    scores: torch.Tensor,
    present: torch.Tensor,
    background: float = 0.2,
    valid: torch.Tensor | None = None,
    normalise: str = "max",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and confidences of ``B×C×h×w`` foreground CAM scores, without gradient (PPC §3.2).

    Foreground confidence is the normalised CAM of the class (``normalise``: ``"max"``, HFPL eq. 4, or ``"minmax"``,
    the reference code's) where the class is present and 0 elsewhere; the background scores the constant
    ``background`` in the argmax, and its confidence is ``1 − max_c r_c``. Returns labels ``B×h×w`` in ``0..C``
    (``C`` = background, ``IGNORE`` outside ``valid``) and confidences ``B×(C+1)×h×w``.
    """
    with torch.no_grad():
        r = (max_normalised_cam if normalise == "max" else minmax_normalised_cam)(scores.detach(), valid)
        r = r * present[:, :, None, None].to(r.dtype)
        peak = r.amax(1, keepdim=True) if r.shape[1] else torch.zeros_like(r[:, :1])
        labels = torch.cat([r, torch.full_like(peak, background)], 1).argmax(1)
        if valid is not None:
            labels = labels.masked_fill(~valid.bool(), IGNORE)
        return labels, torch.cat([r, 1.0 - peak], 1)


def estimate_prototypes(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    confidence: torch.Tensor,
    top_k: int = 32,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes of eq. 5 from ``N×D`` embeddings, ``N`` labels in ``0..K−1`` (or ``IGNORE``) and ``N×K``
    confidences: for each class, the top-``top_k`` pixels by confidence — among those assigned to it, or among all
    pixels with ``labels=None`` (all of them if fewer) — weighted by their confidence (or by ``weights``, ``N×K``,
    when given), averaged and L2-normalised; embeddings are detached. Under torchrun the top-``top_k`` are those of
    the global batch: the top-``top_k`` of every process's top-``top_k``. Returns ``K×D`` prototypes and a ``K`` bool of
    the classes that have one (at least one chosen pixel with positive weight).
    """
    n, k = confidence.shape
    dtype = compute_dtype(embeddings)
    with torch.no_grad():
        candidates = confidence.T.to(dtype)  # K×N
        if labels is not None:
            assigned = labels[None] == torch.arange(k, device=labels.device)[:, None]
            candidates = torch.where(assigned, candidates, -torch.inf)
        ranks, index = candidates.topk(min(top_k, n), dim=1)
        values = (
            ranks if weights is None else torch.where(ranks.isfinite(), weights.T.to(dtype).gather(1, index), ranks)
        )
        chosen = embeddings.detach().to(dtype)[index]  # K×t×D
        # Over the global batch under torchrun: the top-k (by confidence) of the processes' top-k candidates.
        ranks, values = (gather_rows(x.T.contiguous())[0].T for x in (ranks, values))
        chosen = gather_rows(chosen.transpose(0, 1).contiguous())[0].transpose(0, 1)
        if ranks.shape[1] > top_k:
            pick = ranks.topk(top_k, dim=1).indices
            values = values.gather(1, pick)
            chosen = chosen.gather(1, pick[..., None].expand(-1, -1, chosen.shape[2]))
        weights = torch.where(values.isfinite(), values, 0.0)
        total = weights.sum(1)
        summed = torch.einsum("kt,ktd->kd", weights, chosen)
        exists = total > 0
        prototypes = F.normalize(summed / total.clamp_min(1e-12)[:, None], dim=1)
    return prototypes.to(embeddings.dtype), exists


def prototype_contrast(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    exists: torch.Tensor,
    temperature: float = 0.1,
    mining: tuple[int, int] | None = None,
    rank_positive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F(v_i; y_i; P)`` of eq. 4 per pixel (``N``), and which pixels count (a label with a prototype).

    The softmax runs over the prototypes that exist. With ``mining=(skip, keep)`` it runs over the positive and the
    prototypes ranked ``skip+1 … skip+keep`` by similarity to the pixel (semi-hard prototype mining: the ``skip``
    most similar are dropped) — among the negatives, or, with ``rank_positive`` (the reference code), among all
    prototypes, the positive included (it is then in the denominator twice when it ranks there). Gradients flow into
    the embeddings only.
    """
    counts = (labels >= 0) & exists[labels.clamp_min(0)]
    rows = counts.nonzero()[:, 0]  # only these: a missing positive would make the softmax −inf/−inf
    dtype = compute_dtype(embeddings)
    logits = embeddings[rows].to(dtype) @ prototypes.detach().to(dtype).T / temperature  # n×K
    logits = logits.masked_fill(~exists[None], -torch.inf)
    target = labels[rows]
    positive = logits.gather(1, target[:, None])[:, 0]
    if mining is None:
        denominator = torch.logsumexp(logits, 1)
    else:
        skip, keep = mining
        pool = logits if rank_positive else logits.scatter(1, target[:, None], -torch.inf)
        ranked = pool.topk(min(skip + keep, pool.shape[1]), dim=1).values[:, skip:]
        denominator = torch.logsumexp(torch.cat([positive[:, None], ranked], 1), 1)
    loss = logits.new_zeros(labels.shape[0]).index_put((rows,), denominator - positive)
    return loss, counts


def hard_pixel_weights(
    similarity: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    random_fraction: float = 0.5,
    hard_range: tuple[float, float] = (0.1, 0.6),
    generator: torch.Generator | None = None,
    small_classes_count: bool = False,
) -> torch.Tensor:
    """Per-pixel weights that turn a per-pixel loss into PPC's hard pixel sampling (§3.5) when summed.

    For each class with ``n ≥ 2`` counted pixels: ``⌊n·random_fraction⌋`` pixels drawn at random, plus the pixels
    ranked ``⌊n·hi⌋ − ⌊n·(hi − lo)⌋ … ⌊n·hi⌋ − 1`` from the least to the most similar to the class prototype (with
    ``(lo, hi) = (0.1, 0.6)`` the reference code's ``topk(…, int(0.6n), largest=False)[int(0.6n) − n//2:]``). The
    class's loss is the mean over that selection (a pixel in both sets counts twice); the sum over classes is divided
    by the number of classes with ``n ≥ 2`` pixels, or with ``small_classes_count`` (the reference code) with
    ``n ≥ 1``.
    """
    n = labels.numel()
    device = labels.device
    key = torch.where(counts, labels, -1)  # uncounted pixels sort first, into class −1, and are dropped
    k = int(key.max()) + 1 if n else 0
    if k <= 0:
        return torch.zeros(n, device=device)
    sizes = torch.bincount(key[counts], minlength=k)

    def ranks(order: torch.Tensor) -> torch.Tensor:
        """Rank of each pixel within its class under ``order`` (a permutation sorting by the secondary key)."""
        by_class = order[torch.sort(key[order], stable=True).indices]
        starts = torch.cumsum(torch.bincount(key[by_class] + 1, minlength=k + 1), 0)  # ends of classes −1..k−1
        begin = torch.cat([starts.new_zeros(1), starts[:-1]])[key[by_class] + 1]
        out = torch.empty(n, dtype=torch.long, device=device)
        out[by_class] = torch.arange(n, device=device) - begin
        return out

    size = sizes[key.clamp_min(0)]
    random_rank = ranks(torch.randperm(n, device=device, generator=generator))
    hard_rank = ranks(torch.sort(similarity.detach(), stable=True).indices)
    # The reference's slice: the ⌊n·hi⌋ least similar, minus the first ⌊n·hi⌋ − ⌊n·(hi − lo)⌋ of them.
    hi = (size * hard_range[1]).long()
    lo = hi - (size * (hard_range[1] - hard_range[0]) + 1e-9).long()
    take_random = (random_rank < (size * random_fraction).long()).float()
    take_hard = ((hard_rank >= lo) & (hard_rank < hi)).float()
    selected = (size * random_fraction).long() + (hi - lo)
    usable = counts & (size >= 2) & (selected > 0)
    classes = int((sizes >= (1 if small_classes_count else 2)).sum())
    if classes == 0:
        return torch.zeros(n, device=device)
    return torch.where(usable, (take_random + take_hard) / selected.clamp_min(1) / classes, 0.0)


@dataclass(frozen=True)
class ContrastTerms:
    """The terms of the loss, detached: a fixed set, each read by name for logging."""

    cross_prototype: torch.Tensor  # L^cp (eq. 6), mean over both views
    cross_cam: torch.Tensor  # L^cc (eq. 7), mean over both views
    intra: torch.Tensor  # L^intra (eq. 9), mean over both views


class PixelPrototypeContrastLoss(nn.Module):
    """``α·(L^cp + L^cc) + β·L^intra`` (PPC eqs. 1, 6–9) on two views of a batch sampled on one grid.

    Inputs per view: ``B×D×h×w`` L2-normalised pixel embeddings ``v`` and ``B×C×h×w`` foreground CAM scores (both
    on the same grid for the two views), the ``B×C`` present classes and an optional ``B×h×w`` valid mask. Each
    view's labels and prototypes come from its own CAMs (:func:`cam_assignments`, :func:`estimate_prototypes`, over
    the whole batch). For the current view with labels ``y``, prototypes ``P`` and the other view's ``y′``, ``P′``:
    ``L^cp = mean_i F(v_i; y_i; P′)``, ``L^cc = mean_i F(v_i; y′_i; P)``, ``L^intra = F(v_i; y_i; P)`` with semi-hard
    prototype mining (``mining``) and hard pixel sampling (``sampling``), each averaged over the two views (as the
    reference code does). Setting a weight to 0 or a flag to False gives the rows of the paper's ablation (table 5).
    ``objective`` is ``"reference"`` (the authors' code) or ``"present"`` (see the module's docstring).
    """

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 0.1,
        temperature: float = 0.1,
        top_k: int = 32,
        background: float = 0.2,
        cross_prototype: bool = True,
        cross_cam: bool = True,
        intra: bool = True,
        mining: tuple[int, int] | None = (3, 10),
        sampling: bool = True,
        random_fraction: float = 0.5,
        hard_range: tuple[float, float] = (0.1, 0.6),
        objective: str = "reference",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if mining is not None and (mining[0] < 0 or mining[1] < 1):
            raise ValueError(f"mining must be (skip >= 0, keep >= 1), got {mining}")
        if not 0.0 <= hard_range[0] <= hard_range[1] <= 1.0:
            raise ValueError(f"hard_range must satisfy 0 <= lo <= hi <= 1, got {hard_range}")
        if not 0.0 <= random_fraction <= 1.0:
            raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.top_k, self.background = top_k, background
        self.use = {"cross_prototype": cross_prototype, "cross_cam": cross_cam, "intra": intra}
        self.mining, self.sampling = mining, sampling
        self.random_fraction, self.hard_range = random_fraction, hard_range
        self.reference = objective == "reference"

    def forward(
        self,
        embeddings: tuple[torch.Tensor, torch.Tensor],
        scores: tuple[torch.Tensor, torch.Tensor],
        present: torch.Tensor,
        valid: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ContrastTerms]:
        """The total ``α·(L^cp + L^cc) + β·L^intra`` (eq. 1), and its terms, detached."""
        if embeddings[0].shape != embeddings[1].shape or embeddings[0].shape[-2:] != scores[0].shape[-2:]:
            raise ValueError("both views' embeddings and scores must be sampled on one grid")
        views = []
        for v, s, ok in zip(embeddings, scores, valid, strict=True):
            labels, confidence = cam_assignments(s, present, self.background, ok, "minmax" if self.reference else "max")
            pixels = _pixel_rows(v)  # (B·h·w)×D
            labels, confidence = labels.reshape(-1), _pixel_rows(confidence)
            if self.reference:  # every class, from the top-K of its CAM over all the batch's (valid) pixels
                with torch.no_grad():
                    cams = _pixel_rows(minmax_normalised_cam(s.detach(), ok))
                    ranking = torch.cat([cams, confidence[:, -1:]], 1)  # the background: by 1 − max_c r_c
                    if ok is not None:
                        ranking = ranking.masked_fill(~ok.reshape(-1, 1).bool(), -torch.inf)
                    weights = torch.cat([cams, torch.full_like(cams[:, :1], self.background)], 1)
                prototypes = estimate_prototypes(pixels, None, ranking, self.top_k, weights)
            else:
                prototypes = estimate_prototypes(pixels, labels, confidence, self.top_k)
            views.append((pixels, labels, *prototypes))
        zero = embeddings[0].new_zeros((), dtype=compute_dtype(embeddings[0]))
        cp, cc, intra = zero, zero, zero
        for (v, y, p, has), (_, y_other, p_other, has_other) in ((views[0], views[1]), (views[1], views[0])):
            if self.use["cross_prototype"]:
                cp = cp + _mean(*prototype_contrast(v, y, p_other, has_other, self.temperature)) / 2
            if self.use["cross_cam"]:
                cc = cc + _mean(*prototype_contrast(v, y_other, p, has, self.temperature)) / 2
            if self.use["intra"]:
                loss, counts = prototype_contrast(v, y, p, has, self.temperature, self.mining, self.reference)
                if self.sampling:
                    similarity = (v.detach() * p[y.clamp_min(0)]).sum(1)
                    weights = hard_pixel_weights(
                        similarity, y, counts, self.random_fraction, self.hard_range, generator, self.reference
                    )
                    intra = intra + (loss * weights).sum() / 2
                else:
                    intra = intra + _mean(loss, counts) / 2
        total = self.alpha * (cp + cc) + self.beta * intra
        return total, ContrastTerms(cp.detach(), cc.detach(), intra.detach())


def _pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """``B×C×h×w`` → ``(B·h·w)×C``, one row per pixel."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _mean(loss: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of the per-pixel loss over the pixels that count (``1/|I| Σ_i``), 0 when none does."""
    return loss.sum() / counts.sum().clamp_min(1)
