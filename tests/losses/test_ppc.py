"""Pixel-to-prototype contrast against explicit loops: labels, prototypes, InfoNCE, mining, sampling, the full loss;
SEAM's equivariance loss against explicit block averages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses import EquivarianceLoss, PixelPrototypeContrastLoss
from weakseg.losses.ppc import (
    IGNORE,
    cam_assignments,
    estimate_prototypes,
    hard_pixel_weights,
    prototype_contrast,
)

# ---------------------------------------------------------------------------------------------------------------------
# Loop references
# ---------------------------------------------------------------------------------------------------------------------


def loop_normalised(scores, valid, n, k, normalise="max"):
    """One class map: max-normalised (eq. 4), or min-max (the reference's max_norm) over the valid pixels."""
    relu = scores[n, k].clamp_min(0)
    if normalise == "max":
        return relu * valid[n] / max(float((relu * valid[n]).max()), 1e-5)
    low, high = float(relu[valid[n]].min()), float(relu[valid[n]].max())
    return (relu - low - 1e-5).clamp_min(0) / (high - low + 1e-5) * valid[n]


def loop_assignments(scores, present, background, valid, normalise="max"):
    """Per pixel: the normalised present-class scores, background constant, argmax; confidences."""
    b, c, h, w = scores.shape
    labels = torch.empty(b, h, w, dtype=torch.long)
    confidence = torch.zeros(b, c + 1, h, w)
    for n in range(b):
        r = torch.zeros(c, h, w)
        for k in range(c):
            r[k] = loop_normalised(scores, valid, n, k, normalise) * float(present[n, k])
        for y in range(h):
            for x in range(w):
                values = [float(r[k, y, x]) for k in range(c)] + [background]
                best = max(range(c + 1), key=lambda k: (values[k], -k))  # first maximum, as argmax
                labels[n, y, x] = best if valid[n, y, x] else IGNORE
                confidence[n, :c, y, x] = r[:, y, x]
                confidence[n, c, y, x] = 1 - max(values[:c])
    return labels, confidence


def loop_prototypes(embeddings, labels, confidence, top_k):
    k, d = confidence.shape[1], embeddings.shape[1]
    prototypes, exists = torch.zeros(k, d, dtype=torch.float64), torch.zeros(k, dtype=torch.bool)
    for c in range(k):
        members = [i for i in range(len(labels)) if labels[i] == c]
        members.sort(key=lambda i: -float(confidence[i, c]))
        chosen = members[:top_k]
        weight = sum(float(confidence[i, c]) for i in chosen)
        if weight > 0:
            mean = sum(float(confidence[i, c]) * embeddings[i].double() for i in chosen) / weight
            prototypes[c], exists[c] = mean / mean.norm(), True
    return prototypes, exists


def loop_reference_prototypes(embeddings, scores, confidence, valid, top_k, background):
    """The reference's prototypes: each foreground class from the top-K valid pixels of the batch by its min-max CAM
    (present or not, labelled or not), weighted by it; the background from the top-K by 1 − max_c r_c, weight
    constant."""
    b, c, h, w = scores.shape
    pixels = [(n, y, x) for n in range(b) for y in range(h) for x in range(w)]
    cams = [[loop_normalised(scores, valid, n, k, "minmax") for k in range(c)] for n in range(b)]
    prototypes, exists = torch.zeros(c + 1, embeddings.shape[1], dtype=torch.float64), torch.zeros(c + 1, dtype=bool)
    for k in range(c + 1):
        inside = [i for i, (n, y, x) in enumerate(pixels) if valid[n, y, x]]
        if k < c:
            rank = {i: float(cams[pixels[i][0]][k][pixels[i][1], pixels[i][2]]) for i in inside}
            weight = rank
        else:
            rank = {i: float(confidence[i, c]) for i in inside}
            weight = dict.fromkeys(inside, background)
        chosen = sorted(inside, key=lambda i: -rank[i])[:top_k]
        total = sum(weight[i] for i in chosen)
        if total > 0:
            mean = sum(weight[i] * embeddings[i].double() for i in chosen) / total
            prototypes[k], exists[k] = mean / mean.norm(), True
    return prototypes, exists


def loop_info_nce(v, y, prototypes, exists, tau, mining=None):
    """−log(exp(v·p_y/τ) / Σ_{c ∈ allowed} exp(v·p_c/τ)), the allowed set spelled out per pixel; None if no positive."""
    if y < 0 or not exists[y]:
        return None
    sims = {c: float(v.double() @ prototypes[c].double()) for c in range(len(exists)) if exists[c]}
    allowed = [y]
    negatives = sorted((c for c in sims if c != y), key=lambda c: -sims[c])
    if mining is None:
        allowed += negatives
    else:
        skip, keep = mining
        allowed += negatives[skip : skip + keep]
    return -(sims[y] / tau - math.log(sum(math.exp(sims[c] / tau) for c in allowed)))


def loop_info_nce_tensor(v, y, prototypes, exists, tau, mining=None, rank_positive=False):
    """Differentiable version of :func:`loop_info_nce` (for gradients), pixel by pixel; with ``rank_positive`` the
    mined ranks run over all prototypes, the positive included."""
    if y < 0 or not exists[y]:
        return None
    sims = [(v @ prototypes[c].to(v.dtype)) if exists[c] else None for c in range(len(exists))]
    ranked = (c for c in range(len(exists)) if exists[c] and (rank_positive or c != y))
    negatives = sorted(ranked, key=lambda c: -float(sims[c].detach()))
    if mining is not None:
        negatives = negatives[mining[0] : mining[0] + mining[1]]
    terms = torch.stack([sims[y] / tau] + [sims[c] / tau for c in negatives])
    return -(sims[y] / tau - torch.logsumexp(terms, 0))


def _views(seed: int = 0, b: int = 2, c: int = 4, d: int = 6, h: int = 3, w: int = 4):
    g = torch.Generator().manual_seed(seed)
    embeddings = [F.normalize(torch.randn(b, d, h, w, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    scores = [torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * 2 for _ in range(2)]
    present = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.float64)[:b, :c]
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[1, 0, :2] = False
    return embeddings, scores, present, valid


# ---------------------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_assignments_match_a_pixel_loop() -> None:
    _, scores, present, valid = _views()
    labels, confidence = cam_assignments(scores[0], present, 0.2, valid)
    want_labels, want_confidence = loop_assignments(scores[0], present, 0.2, valid)
    assert torch.equal(labels, want_labels)
    torch.testing.assert_close(confidence, want_confidence.to(confidence.dtype))
    for n in range(2):  # absent classes never win
        absent = (present[n] == 0).nonzero()[:, 0]
        assert not torch.isin(labels[n], absent).any()


@pytest.mark.parametrize("top_k", [1, 3, 100])
def test_prototypes_match_a_loop(top_k: int) -> None:
    embeddings, scores, present, valid = _views(1)
    scores = [s + 3 for s in scores]  # no ties in the confidences (the top-K of tied pixels is arbitrary)
    present[:, 0] = 0  # class 0 in no image: no prototype
    labels, confidence = cam_assignments(scores[0], present, 0.6, valid)
    pixels = embeddings[0].permute(0, 2, 3, 1).reshape(-1, 6)
    flat_labels, flat_conf = labels.reshape(-1), confidence.permute(0, 2, 3, 1).reshape(24, -1)
    prototypes, exists = estimate_prototypes(pixels, flat_labels, flat_conf, top_k)
    want, want_exists = loop_prototypes(pixels, flat_labels, flat_conf, top_k)
    assert torch.equal(exists, want_exists)
    torch.testing.assert_close(prototypes[exists], want[want_exists])
    assert not exists[0] and exists[4]  # absent class; background


def test_prototypes_are_detached_weighted_means_of_the_top_k() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1])
    confidence = torch.tensor([[0.9, 0.0], [0.3, 0.0], [0.6, 0.0], [0.0, 1.0]])
    prototypes, exists = estimate_prototypes(embeddings, labels, confidence, top_k=2)
    mean = (0.9 * torch.tensor([1.0, 0.0]) + 0.6 * torch.tensor([1.0, 1.0])) / 1.5  # pixels 0 and 2: the top 2
    torch.testing.assert_close(prototypes[0], F.normalize(mean, dim=0))
    assert exists.tolist() == [True, True] and not prototypes.requires_grad


@pytest.mark.parametrize("mining", [None, (3, 10), (1, 2), (0, 1)])
def test_contrast_equals_direct_info_nce_values_and_gradients(mining) -> None:
    g = torch.Generator().manual_seed(3)
    k, d, n = 16, 5, 12
    prototypes = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    exists = torch.ones(k, dtype=torch.bool)
    exists[[2, 7]] = False
    v = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.randint(0, k, (n,), generator=g)
    labels[0], labels[1] = IGNORE, 2  # ignored; no prototype
    loss, counts = prototype_contrast(v, labels, prototypes, exists, 0.1, mining)
    assert counts.tolist() == [labels[i] >= 0 and bool(exists[labels[i]]) for i in range(n)]
    for i in range(n):
        want = loop_info_nce(v[i].detach(), int(labels[i]), prototypes, exists, 0.1, mining)
        assert (want is None and loss[i] == 0) or math.isclose(float(loss[i].detach()), want, rel_tol=1e-9)
    loss.sum().backward()
    v2 = v.detach().clone().requires_grad_()
    total = sum(
        t
        for i in range(n)
        if (t := loop_info_nce_tensor(v2[i], int(labels[i]), prototypes, exists, 0.1, mining)) is not None
    )
    total.backward()
    torch.testing.assert_close(v.grad, v2.grad)


def test_mining_keeps_exactly_the_ranks_four_to_thirteen_of_the_negatives() -> None:
    """Hand-built similarity table: one-hot prototypes, so v·p_c is v's c-th component."""
    k = 21
    prototypes, exists = torch.eye(k, dtype=torch.float64), torch.ones(k, dtype=torch.bool)
    similarity = torch.linspace(0.9, -0.9, k, dtype=torch.float64)  # class c's similarity falls with c
    v = similarity[None].clone()  # not unit length: only the table matters here
    label = torch.tensor([5])
    loss, _ = prototype_contrast(v, label, prototypes, exists, 1.0, (3, 10))
    negatives = [c for c in range(k) if c != 5]  # already sorted by similarity, most similar first
    kept = negatives[3:13]
    assert kept == [3, 4, 6, 7, 8, 9, 10, 11, 12, 13]
    want = -similarity[5] + torch.logsumexp(torch.stack([similarity[5], *similarity[kept]]), 0)
    torch.testing.assert_close(loss[0], want)


def test_reference_mining_ranks_the_positive_with_the_others() -> None:
    """The reference ranks all prototypes: ranks 4–13 of the 21 include the positive (class 5 ranks 6th here), which
    then sits in the denominator twice."""
    k = 21
    prototypes, exists = torch.eye(k, dtype=torch.float64), torch.ones(k, dtype=torch.bool)
    similarity = torch.linspace(0.9, -0.9, k, dtype=torch.float64)
    loss, _ = prototype_contrast(similarity[None].clone(), torch.tensor([5]), prototypes, exists, 1.0, (3, 10), True)
    kept = list(range(3, 13))
    want = -similarity[5] + torch.logsumexp(torch.stack([similarity[5], *similarity[kept]]), 0)
    torch.testing.assert_close(loss[0], want)


def test_reference_sampling_counts_single_pixel_classes_in_the_denominator() -> None:
    """Class 0 has 4 pixels, class 1 one: the class average divides by 1 (classes with ≥ 2 pixels) or, as the
    reference, by 2."""
    labels, counts = torch.tensor([0, 0, 0, 0, 1]), torch.ones(5, dtype=torch.bool)
    similarity = torch.linspace(-1, 1, 5)
    ours = hard_pixel_weights(similarity, labels, counts, random_fraction=0.5, hard_range=(0.0, 0.0))
    reference = hard_pixel_weights(similarity, labels, counts, 0.5, (0.0, 0.0), small_classes_count=True)
    assert float(ours.sum()) == pytest.approx(1.0) and float(reference.sum()) == pytest.approx(0.5)
    assert float(reference[4]) == 0.0


def test_mining_leaves_no_negative_when_the_batch_has_too_few_prototypes() -> None:
    prototypes, exists = torch.eye(4, dtype=torch.float64), torch.ones(4, dtype=torch.bool)
    v = F.normalize(torch.rand(3, 4, dtype=torch.float64), dim=1)
    loss, counts = prototype_contrast(v, torch.tensor([0, 1, 2]), prototypes, exists, 0.1, (3, 10))
    assert counts.all() and torch.equal(loss, torch.zeros(3, dtype=torch.float64))  # −log(e^s / e^s)


def _hard_set(weights: torch.Tensor) -> list[int]:
    return sorted((weights > 0).nonzero()[:, 0].tolist())


@pytest.mark.parametrize(("n", "hard"), [(10, [1, 2, 3, 4, 5]), (7, [1, 2, 3]), (2, [0]), (20, list(range(2, 12)))])
def test_hard_sampling_takes_the_ten_to_sixty_percent_least_similar(n: int, hard: list[int]) -> None:
    """Pixels numbered by similarity, least similar first, shuffled; the reference's slice of ranks."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    similarity = torch.empty(n)
    similarity[order] = torch.linspace(-1, 1, n)  # pixel order[r] has rank r
    labels, counts = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool)
    weights = hard_pixel_weights(similarity, labels, counts, random_fraction=0.0)
    assert _hard_set(weights) == sorted(order[hard].tolist())
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))  # the class's mean


def test_random_sampling_takes_half_of_each_class_and_classes_are_averaged() -> None:
    labels = torch.tensor([0] * 9 + [1] * 4 + [2] * 1 + [3] * 6)
    counts = torch.ones(20, dtype=torch.bool)
    counts[-6:] = False  # class 3's pixels do not count (no prototype)
    similarity = torch.rand(20, generator=torch.Generator().manual_seed(0))
    weights = hard_pixel_weights(similarity, labels, counts, hard_range=(0.0, 0.0), generator=torch.Generator())
    picked = weights > 0
    assert [int(picked[labels == c].sum()) for c in range(4)] == [4, 2, 0, 0]  # ⌊n/2⌋; class 2 has n < 2
    for c in (0, 1):
        torch.testing.assert_close(weights[labels == c].sum(), torch.tensor(0.5))  # two classes, averaged
    both = hard_pixel_weights(similarity, labels, counts, generator=torch.Generator().manual_seed(1))
    for c in (0, 1):
        torch.testing.assert_close(both[labels == c].sum(), torch.tensor(0.5))


def test_sampling_is_reproducible_with_a_generator() -> None:
    labels = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(0))
    similarity, counts = torch.rand(50), torch.ones(50, dtype=torch.bool)
    a = hard_pixel_weights(similarity, labels, counts, generator=torch.Generator().manual_seed(5))
    b = hard_pixel_weights(similarity, labels, counts, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------------------


def loop_ppc(embeddings, scores, present, valid, alpha, beta, tau, top_k, background, mining, objective):
    """α·(L^cp + L^cc) + β·L^intra from loops (no pixel sampling), each term averaged over the two views."""
    reference = objective == "reference"
    views = []
    for v, s in zip(embeddings, scores, strict=True):
        labels, confidence = loop_assignments(s.detach(), present, background, valid, "minmax" if reference else "max")
        pixels = v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])
        flat_labels, flat_conf = labels.reshape(-1), confidence.permute(0, 2, 3, 1).reshape(pixels.shape[0], -1)
        if reference:
            protos = loop_reference_prototypes(pixels.detach(), s.detach(), flat_conf, valid, top_k, background)
        else:
            protos = loop_prototypes(pixels.detach(), flat_labels, flat_conf, top_k)
        views.append((pixels, flat_labels, *protos))

    def mean(v, y, p, has, mine=None):
        values = [loop_info_nce_tensor(v[i], int(y[i]), p, has, tau, mine, reference and mine is not None)
                  for i in range(len(y))]  # fmt: skip
        values = [x for x in values if x is not None]
        return torch.stack(values).mean() if values else v.sum() * 0

    cp = cc = intra = 0
    for (v, y, p, has), (_, y2, p2, has2) in ((views[0], views[1]), (views[1], views[0])):
        cp = cp + mean(v, y, p2, has2) / 2
        cc = cc + mean(v, y2, p, has) / 2
        intra = intra + mean(v, y, p, has, mining) / 2
    return alpha * (cp + cc) + beta * intra


@pytest.mark.parametrize("objective", ["reference", "present"])
@pytest.mark.parametrize("mining", [None, (1, 2)])
def test_loss_matches_the_loop_values_and_gradients(mining, objective: str) -> None:
    embeddings, scores, present, valid = _views(4)
    scores = [s + 3 for s in scores]  # no ties in the confidences (the top-K of tied pixels is arbitrary)
    embeddings = [e.requires_grad_() for e in embeddings]
    loss_fn = PixelPrototypeContrastLoss(alpha=0.1, beta=0.3, top_k=3, background=0.6, mining=mining, sampling=False,
                                         objective=objective)  # fmt: skip
    loss, _ = loss_fn(tuple(embeddings), tuple(scores), present, (valid, valid))
    loss.backward()
    mirror = [e.detach().clone().requires_grad_() for e in embeddings]
    want = loop_ppc(mirror, scores, present, valid, 0.1, 0.3, 0.1, 3, 0.6, mining, objective)
    want.backward()
    torch.testing.assert_close(loss, want.to(loss.dtype))
    for got, ref in zip(embeddings, mirror, strict=True):
        torch.testing.assert_close(got.grad, ref.grad.to(got.grad.dtype))


def test_terms_switch_off_for_the_ablation_rows() -> None:
    embeddings, scores, present, _ = _views(5)
    loss_fn = PixelPrototypeContrastLoss(mining=None, sampling=False)
    total, full = loss_fn(tuple(embeddings), tuple(scores), present)
    assert not any(term.requires_grad for term in (full.cross_prototype, full.cross_cam, full.intra))
    assert full.cross_prototype > 0 and full.cross_cam > 0 and full.intra > 0
    torch.testing.assert_close(total.detach(), 0.1 * (full.cross_prototype + full.cross_cam) + 0.1 * full.intra)
    only_cp, _ = PixelPrototypeContrastLoss(cross_cam=False, intra=False)(tuple(embeddings), tuple(scores), present)
    torch.testing.assert_close(only_cp, 0.1 * full.cross_prototype)


def test_terms_are_returned_and_nothing_is_left_on_the_module() -> None:
    embeddings, scores, present, _ = _views(5)
    loss_fn = PixelPrototypeContrastLoss()
    attributes = dict(vars(loss_fn))
    total, terms = loss_fn(tuple(e.requires_grad_() for e in embeddings), tuple(scores), present)
    assert vars(loss_fn).keys() == attributes.keys() and all(vars(loss_fn)[k] is v for k, v in attributes.items())
    assert total.requires_grad
    assert not any(t.requires_grad for t in (terms.cross_prototype, terms.cross_cam, terms.intra))


def test_sampled_intra_term_is_the_weighted_per_pixel_loss() -> None:
    embeddings, scores, present, valid = _views(6)
    loss_fn = PixelPrototypeContrastLoss(alpha=0.0, beta=1.0, cross_prototype=False, cross_cam=False, mining=None,
                                         objective="present")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    got, _ = loss_fn(tuple(embeddings), tuple(scores), present, (valid, valid), generator=generator)
    g = torch.Generator().manual_seed(0)
    want = 0.0
    for v, s in zip(embeddings, scores, strict=True):
        labels, confidence = cam_assignments(s, present, 0.2, valid)
        pixels = v.permute(0, 2, 3, 1).reshape(-1, 6)
        labels, confidence = labels.reshape(-1), confidence.permute(0, 2, 3, 1).reshape(24, -1)
        p, has = estimate_prototypes(pixels, labels, confidence, 32)
        per_pixel, counts = prototype_contrast(pixels, labels, p, has, 0.1)
        similarity = (pixels * p[labels.clamp_min(0)]).sum(1)
        want = want + (per_pixel * hard_pixel_weights(similarity, labels, counts, generator=g)).sum() / 2
    torch.testing.assert_close(got, want)


def test_loss_checks_its_inputs() -> None:
    embeddings, scores, present, _ = _views()
    with pytest.raises(ValueError, match="one grid"):
        PixelPrototypeContrastLoss()((embeddings[0], embeddings[1][..., :2]), tuple(scores), present)
    with pytest.raises(ValueError, match="temperature"):
        PixelPrototypeContrastLoss(temperature=0)
    with pytest.raises(ValueError, match="hard_range"):
        PixelPrototypeContrastLoss(hard_range=(0.7, 0.6))


# ---------------------------------------------------------------------------------------------------------------------
# SEAM's equivariance loss
# ---------------------------------------------------------------------------------------------------------------------


def test_equivariance_is_the_l1_of_block_averaged_normalised_cams() -> None:
    g = torch.Generator().manual_seed(0)
    source = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    present = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    loss = EquivarianceLoss()(source, target, present)
    total = 0.0
    for n in range(2):
        for c in range(3):
            rs = source[n, c].clamp_min(0) / source[n, c].clamp_min(0).max().clamp_min(1e-5)
            rt = target[n, c].clamp_min(0) / target[n, c].clamp_min(0).max().clamp_min(1e-5)
            for y in range(2):
                for x in range(3):
                    block = rs[2 * y : 2 * y + 2, 2 * x : 2 * x + 2].mean()  # bilinear ½-scale = 2×2 mean
                    total = total + present[n, c] * (block - rt[y, x]).abs()
    want = total / (2 * 3 * 2 * 3)
    torch.testing.assert_close(loss, want)
    grads = torch.autograd.grad(loss, (source, target))
    want_grads = torch.autograd.grad(want, (source, target))
    for got, ref in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, ref)


def test_equivariance_is_zero_for_consistent_views_and_skips_padding() -> None:
    target = torch.rand(1, 2, 2, 2)
    source = F.interpolate(target, scale_factor=2, mode="nearest")  # its bilinear ½-scale is the target
    present = torch.ones(1, 2)
    assert float(EquivarianceLoss()(source, target, present)) < 1e-6
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    valid[0, :, 1] = False
    losses = []
    for fill in (100.0, -5.0):  # padding values leave the loss (and the normalisation) alone
        padded = target.clone()
        padded[..., 1] = fill
        losses.append(EquivarianceLoss()(source, padded, present, None, valid))
    torch.testing.assert_close(losses[0], losses[1])
