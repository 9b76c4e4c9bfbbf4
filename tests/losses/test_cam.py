"""CAM losses (binomial ISL and FSL) against brute force over pixels and pixel pairs: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.cam import (
    FeatureSimilarityLoss,
    ImportanceSamplingLoss,
    max_normalised_cam,
    minmax_normalised_cam,
    sample_positions,
)

# ---------------------------------------------------------------------------------------------------------------------
# Brute-force references
# ---------------------------------------------------------------------------------------------------------------------


def brute_fsl(
    scores: torch.Tensor,
    image: torch.Tensor,
    present: torch.Tensor,
    valid: torch.Tensor | None,
    mu: float,
    sigma: float,
    window: int | None = None,
    normalise: str = "minmax",
    background: bool = True,
) -> torch.Tensor:
    """−(1/HW) Σ_ij w_ij g(r_i, r_j) f(δ_ij) per image, mean over the batch, with explicit loops over ordered pairs;
    r per class by max (eq. 4) or min-max (the reference's max_norm), plus the background 1 − max_c r_c."""
    b, c, h, w = scores.shape
    total = scores.new_zeros(())
    for n in range(b):
        ok = torch.ones(h, w, dtype=torch.bool) if valid is None else valid[n]
        classes = []
        for k in range(c):
            relu = scores[n, k].clamp_min(0)
            if normalise == "max":
                r_k = relu * ok / (relu * ok).max().clamp_min(1e-5)
            else:
                low, high = relu[ok].min(), relu[ok].max()
                r_k = (relu - low - 1e-5).clamp_min(0) / (high - low + 1e-5) * ok
            classes.append(r_k * float(present[n, k]))
        if background:
            classes.append((1 - torch.stack(classes).amax(0)) * ok)
        r = torch.stack(classes)  # C(+1)×h×w
        pixels = [(y, x) for y in range(h) for x in range(w) if ok[y, x]]
        pair_sum = scores.new_zeros(())
        for yi, xi in pixels:
            for yj, xj in pixels:
                if window is not None and (abs(yi - yj) > window or abs(xi - xj) > window):
                    continue
                weight = math.exp(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
                l1 = sum(abs(float(image[n, ch, yi, xi]) - float(image[n, ch, yj, xj])) for ch in range(3))
                delta = min(max(l1 / 3, 1e-6), 1 - 1e-6)
                f = math.tanh(mu + math.log(delta / (1 - delta)))
                g = 0.5 * (r[:, yi, xi] - r[:, yj, xj]).square().sum()
                pair_sum = pair_sum + weight * f * g
        total = total - pair_sum / len(pixels)
    return total / b


def bce(logit: torch.Tensor, target: float) -> torch.Tensor:
    return -(target * F.logsigmoid(logit) + (1 - target) * F.logsigmoid(-logit))


def brute_isl(
    scores: torch.Tensor,
    labels: torch.Tensor,
    positions: torch.Tensor,
    lam: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1−λ)·BCE(GAP) + λ·mean over images, classes and samples of BCE(s at the drawn pixel), by explicit loops."""
    b, c, h, w = scores.shape
    gap, sampled = scores.new_zeros(()), scores.new_zeros(())
    for n in range(b):
        pixels = [(y, x) for y in range(h) for x in range(w) if valid is None or valid[n, y, x]]
        for k in range(c):
            target = float(labels[n, k])
            pooled = sum(scores[n, k, y, x] for y, x in pixels) / len(pixels)
            gap = gap + bce(pooled, target)
            for index in positions[n, k].tolist():
                sampled = sampled + bce(scores[n, k, index // w, index % w], target)
    return (1 - lam) * gap / (b * c) + (lam * sampled / positions.numel() if lam else 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------------


def two_region_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Two flat colours (left/right) plus a little noise: pairs on both sides of δ = sigmoid(−μ), f of both signs."""
    g = torch.Generator().manual_seed(seed)
    image = torch.empty(b, 3, h, w, dtype=torch.float64)
    image[..., : w // 2] = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)[:, None, None]
    image[..., w // 2 :] = torch.tensor([0.8, 0.6, 0.1], dtype=torch.float64)[:, None, None]
    return (image + 0.04 * torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)


@pytest.fixture
def fsl_case():
    g = torch.Generator().manual_seed(1)
    b, c, h, w = 2, 4, 3, 4
    scores = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) + 0.3
    image = two_region_image(b, h, w)
    present = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.float64)
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[0, :, -1] = False
    valid[1, 0, 0] = valid[1, 2, 1] = False
    return scores, image, present, valid


def value_and_grad(loss_fn, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = scores.detach().clone().requires_grad_(True)
    value = loss_fn(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


# ---------------------------------------------------------------------------------------------------------------------
# max-normalised CAM
# ---------------------------------------------------------------------------------------------------------------------


def test_max_normalised_cam_peaks_at_one_and_guards_all_negative_classes() -> None:
    scores = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores[1, 2] = -scores[1, 2].abs() - 0.1  # no positive score: all zero, no NaN
    r = max_normalised_cam(scores)
    torch.testing.assert_close(r.flatten(2).amax(-1)[[0, 0, 0, 1, 1], [0, 1, 2, 0, 1]], torch.ones(5, dtype=r.dtype))
    assert (r[1, 2] == 0).all() and torch.isfinite(r).all() and (r >= 0).all()
    torch.testing.assert_close(r, F.relu(scores) / F.relu(scores).flatten(2).amax(-1).clamp_min(1e-5)[..., None, None])


def test_minmax_normalised_cam_spans_zero_to_one_over_the_valid_pixels() -> None:
    """The reference's max_norm: relu(ReLU(s) − min − ε) / (max − min + ε); pixels outside ``valid`` set neither."""
    scores = torch.tensor([[[[1.0, 3.0, -2.0], [2.0, 100.0, 5.0]]]], dtype=torch.float64)
    valid = torch.ones(1, 2, 3, dtype=torch.bool)
    valid[0, 1, 1] = False
    r = minmax_normalised_cam(scores, valid)
    eps = 1e-5  # ReLU: min 0 (at −2), max 5
    want = torch.tensor([[1 - eps, 3 - eps, 0.0], [2 - eps, 0.0, 5 - eps]], dtype=torch.float64) / (5 + eps)
    torch.testing.assert_close(r[0, 0], want)


def test_max_normalised_cam_takes_the_max_over_valid_pixels_only() -> None:
    scores = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    scores[0, :, 0, 0] = 100.0  # outside the valid region: must not set the normaliser
    valid = torch.ones(1, 3, 3, dtype=torch.bool)
    valid[0, 0, 0] = False
    r = max_normalised_cam(scores, valid)
    assert (r[0, :, 0, 0] == 0).all()
    torch.testing.assert_close(r.flatten(2).amax(-1), torch.ones(1, 2, dtype=r.dtype))


# ---------------------------------------------------------------------------------------------------------------------
# Feature similarity loss
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "chunk", "masked", "mu", "normalise", "background"),
    [
        (None, 4096, False, 2.5, "minmax", True),
        (None, 5, False, 2.5, "minmax", True),
        (None, 7, True, 2.5, "minmax", True),
        (1, 4096, False, 2.5, "minmax", True),
        (2, 4096, True, 2.5, "minmax", True),
        (None, 4096, False, 2.5, "max", False),
        (None, 7, True, 2.5, "max", False),
        (1, 4096, True, 2.5, "max", False),
        (None, 4096, True, -1.0, "max", True),
        (2, 4096, True, 0.0, "minmax", False),
    ],
)
def test_fsl_matches_pairwise_loops(
    fsl_case, window: int | None, chunk: int, masked: bool, mu: float, normalise: str, background: bool
) -> None:
    scores, image, present, valid = fsl_case
    valid = valid if masked else None
    loss = FeatureSimilarityLoss(mu=mu, sigma=1.5, window=window, chunk=chunk, normalise=normalise,
                                 background=background)  # fmt: skip
    value, grad = value_and_grad(lambda s: loss(s, image, present, valid), scores)
    ref_value, ref_grad = value_and_grad(
        lambda s: brute_fsl(s, image, present, valid, mu, 1.5, window, normalise, background), scores
    )
    assert ref_value.abs() > 1e-4 and ref_grad.abs().max() > 1e-4  # a non-trivial case
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_fsl_window_covering_the_map_equals_dense(masked: bool) -> None:
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    image, present = two_region_image(2, 6, 7, seed=3), torch.tensor([[1, 1, 0], [1, 0, 1]])
    valid = torch.rand(2, 6, 7, generator=g) > 0.2 if masked else None
    dense = value_and_grad(lambda s: FeatureSimilarityLoss(sigma=2.0, chunk=9)(s, image, present, valid), scores)
    for window in (6, 7, 50):
        local = FeatureSimilarityLoss(sigma=2.0, window=window)
        windowed = value_and_grad(lambda s, loss=local: loss(s, image, present, valid), scores)
        torch.testing.assert_close(windowed, dense, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("side", [-1, 1])
def test_fsl_sign_flips_at_sigmoid_minus_mu(side: int) -> None:
    """δ just below sigmoid(−μ): f < 0, loss > 0, a step pulls r_i, r_j together; just above: the opposite."""
    mu, sigma = 2.5, 5.0
    threshold = 1 / (1 + math.exp(mu))
    delta = threshold + side * 1e-3
    image = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    image[0, :, 0, 1] = delta  # ‖x_i − x_j‖₁ / 3 = δ
    scores = torch.tensor([[[[2.0, 0.5]]]], dtype=torch.float64)
    present = torch.ones(1, 1)
    loss = FeatureSimilarityLoss(mu=mu, sigma=sigma, normalise="max", background=False)  # the paper's eq. 4 r
    value, grad = value_and_grad(lambda s: loss(s, image, present), scores)
    # Two ordered pairs, HW = 2: −(1/2)·2·w·f·½(1 − 0.25)².
    f = math.tanh(mu + math.log(delta / (1 - delta)))
    expected = -math.exp(-1 / (2 * sigma**2)) / (2 * math.pi * sigma**2) * f * 0.5 * 0.75**2
    assert math.copysign(1.0, float(value)) == -side
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    gap = lambda s: float((max_normalised_cam(s)[0, 0, 0, 0] - max_normalised_cam(s)[0, 0, 0, 1]).abs())  # noqa: E731
    stepped = scores - 10.0 * grad
    assert (gap(stepped) - gap(scores)) * side > 0  # together (gap shrinks) below, apart above
    at_threshold = threshold * torch.ones(1, 3, 1, 2, dtype=torch.float64)
    at_threshold[..., 0] = 0
    assert abs(float(loss(scores, at_threshold, present))) < 1e-15  # f(sigmoid(−μ)) = tanh(0) = 0


def test_fsl_absent_classes_do_not_contribute(fsl_case) -> None:
    scores, image, present, valid = fsl_case
    loss = FeatureSimilarityLoss(sigma=1.5)
    value, grad = value_and_grad(lambda s: loss(s, image, present, valid), scores)
    changed = scores.clone()
    absent = present == 0
    changed[absent] = 5 * torch.randn_like(changed[absent])
    value2, grad2 = value_and_grad(lambda s: loss(s, image, present, valid), changed)
    torch.testing.assert_close(value2, value, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad2, grad, rtol=1e-13, atol=1e-15)
    assert (grad[absent] == 0).all()
    # and an all-absent batch gives zero (the background channel is then 1 everywhere)
    assert abs(float(loss(scores, image, torch.zeros_like(present), valid))) < 1e-15


def test_fsl_low_precision_inputs_compute_in_float32(fsl_case) -> None:
    scores, image, present, valid = fsl_case
    reference = FeatureSimilarityLoss(sigma=1.5)(scores, image, present, valid)
    for dtype in (torch.float32, torch.bfloat16):
        value = FeatureSimilarityLoss(sigma=1.5)(scores.to(dtype), image.float(), present.bool(), valid)
        assert value.dtype == torch.float32
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(value.double(), reference, rtol=tol, atol=tol * 1e-2)


# ---------------------------------------------------------------------------------------------------------------------
# Importance sampling loss
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def isl_case():
    g = torch.Generator().manual_seed(4)
    scores = 2 * torch.randn(3, 4, 3, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    valid = torch.rand(3, 3, 4, generator=g) > 0.3
    valid[:, 0, 0] = True
    return scores, labels, valid


@pytest.mark.parametrize("masked", [False, True])
def test_isl_lambda_zero_is_the_gap_multilabel_soft_margin_loss(isl_case, masked: bool) -> None:
    scores, labels, valid = isl_case
    valid = valid if masked else None
    value = ImportanceSamplingLoss(samples=10, lam=0.0)(scores, labels, valid)
    if valid is None:
        assert torch.equal(value, F.multilabel_soft_margin_loss(scores.mean((2, 3)), labels))
    else:
        pooled = torch.stack([torch.stack([s[v].mean() for s in im]) for im, v in zip(scores, valid, strict=True)])
        torch.testing.assert_close(value, F.multilabel_soft_margin_loss(pooled, labels), rtol=1e-14, atol=0)
    no_samples = torch.zeros(3, 4, 0, dtype=torch.long)
    torch.testing.assert_close(value, brute_isl(scores, labels, no_samples, 0.0, valid), rtol=1e-14, atol=0)


@pytest.mark.parametrize(("lam", "masked"), [(0.2, False), (1.0, False), (0.5, True)])
def test_isl_matches_loops_for_fixed_positions(isl_case, lam: float, masked: bool) -> None:
    scores, labels, valid = isl_case
    valid = valid if masked else None
    positions = sample_positions(scores, 6, valid, torch.Generator().manual_seed(11))
    loss = ImportanceSamplingLoss(samples=6, lam=lam)
    value, grad = value_and_grad(lambda s: loss(s, labels, valid, torch.Generator().manual_seed(11)), scores)
    ref_value, ref_grad = value_and_grad(lambda s: brute_isl(s, labels, positions, lam, valid), scores)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)
    if lam == 1.0:  # the gradient flows through the gathered logits only
        hit = torch.zeros(scores.flatten(2).shape, dtype=torch.bool).scatter_(2, positions, True)
        assert ((grad.flatten(2) != 0) == hit).all()


def test_sample_positions_follow_sigmoid_over_its_sum() -> None:
    """Empirical frequencies of one 3×4 map (two classes, each its own distribution) over 120k draws."""
    logits = torch.linspace(-3, 2, 12)[torch.randperm(12, generator=torch.Generator().manual_seed(5))]
    scores = torch.stack([logits, -logits]).reshape(1, 2, 3, 4)
    draws = 120_000
    positions = sample_positions(scores, draws, generator=torch.Generator().manual_seed(6))
    assert positions.shape == (1, 2, draws) and positions.dtype == torch.long
    for k in range(2):
        p = torch.sigmoid(scores[0, k].flatten().double())
        p = p / p.sum()
        counts = torch.bincount(positions[0, k], minlength=12).double()
        # χ² with 11 degrees of freedom: 37.4 is its 1 − 1e-4 quantile.
        chi2 = float(((counts - draws * p) ** 2 / (draws * p)).sum())
        assert chi2 < 37.4
        # Each frequency is within 5 binomial standard deviations sqrt(p(1−p)/n) (≤ 0.0055 here).
        assert ((counts / draws - p).abs() <= 5 * (p * (1 - p) / draws).sqrt()).all()


def test_sample_positions_are_seeded_and_ignore_very_negative_logits_gracefully() -> None:
    scores = torch.full((1, 1, 3, 4), -200.0)  # sigmoid underflows in float32: sampling must not fail
    scores[0, 0, 1, 2] = -150.0
    positions = sample_positions(scores, 50, generator=torch.Generator().manual_seed(0))
    assert (positions == 1 * 4 + 2).all()
    scores = torch.randn(2, 3, 5, 5)
    a = sample_positions(scores, 8, generator=torch.Generator().manual_seed(3))
    b = sample_positions(scores, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_isl_equals_gap_when_each_class_map_is_constant() -> None:
    """All samples of a class hit the same logit, which is also its average: L_IS = L_GAP."""
    levels = torch.tensor([[1.5, -0.25, 3.0], [-2.0, 0.75, 0.0]], dtype=torch.float64)
    scores = levels[:, :, None, None].expand(2, 3, 4, 5).contiguous()
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.float64)
    gap = ImportanceSamplingLoss(samples=7, lam=0.0)(scores, labels)
    sampled = ImportanceSamplingLoss(samples=7, lam=1.0)(scores, labels, generator=torch.Generator().manual_seed(0))
    mixed = ImportanceSamplingLoss(samples=7, lam=0.3)(scores, labels, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled, gap, rtol=1e-15, atol=0)
    torch.testing.assert_close(mixed, gap, rtol=1e-15, atol=0)


def test_samples_never_land_on_invalid_pixels() -> None:
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(3, 4, 5, 6, generator=g)
    valid = torch.rand(3, 5, 6, generator=g) > 0.6
    valid[:, 2, 3] = True
    scores[~valid[:, None].expand_as(scores)] = 50.0  # invalid pixels would take almost every draw
    positions = sample_positions(scores, 500, valid, g)
    assert valid.flatten(1).gather(1, positions.flatten(1)).all()
    one = torch.zeros(1, 5, 6, dtype=torch.bool)
    one[0, 4, 1] = True
    assert (sample_positions(scores[:1], 20, one, g) == 4 * 6 + 1).all()


# ---------------------------------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: ImportanceSamplingLoss(samples=0),
        lambda: ImportanceSamplingLoss(lam=-0.1),
        lambda: ImportanceSamplingLoss(lam=1.5),
        lambda: FeatureSimilarityLoss(sigma=0.0),
        lambda: FeatureSimilarityLoss(window=-1),
        lambda: FeatureSimilarityLoss(chunk=0),
    ],
)
def test_invalid_arguments_raise(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_invalid_inputs_raise() -> None:
    scores, labels = torch.randn(2, 3, 4, 5), torch.ones(2, 3)
    with pytest.raises(ValueError, match="samples"):
        sample_positions(scores, 0)
    with pytest.raises(ValueError, match="valid pixel"):
        sample_positions(scores, 3, torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid"):
        ImportanceSamplingLoss()(scores, labels, torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        ImportanceSamplingLoss()(scores, torch.ones(2, 4))
    with pytest.raises(ValueError, match="image"):
        FeatureSimilarityLoss()(scores, torch.rand(2, 3, 5, 4), labels)
    with pytest.raises(ValueError, match="present"):
        FeatureSimilarityLoss()(scores, torch.rand(2, 3, 4, 5), torch.ones(2, 4))
