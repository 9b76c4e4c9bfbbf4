"""Regularized losses against brute force over pixel pairs: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from tests.ops.test_bilateral import smooth_probs, structured_image
from weakseg.losses import DenseCRFLoss, EntropyLoss, NormalizedCutLoss


def kernel_matrix(image: torch.Tensor, sigma_xy: float, sigma_rgb: float) -> torch.Tensor:
    """W[n, p, q] built with explicit loops over pixel pairs (row-major pixels)."""
    b, _, h, w = image.shape
    pixels = [(y, x) for y in range(h) for x in range(w)]
    out = torch.zeros(b, h * w, h * w, dtype=torch.float64)
    for n in range(b):
        for i, (py, px) in enumerate(pixels):
            for j, (qy, qx) in enumerate(pixels):
                colour = float((image[n, :, py, px].double() - image[n, :, qy, qx].double()).square().sum())
                out[n, i, j] = math.exp(
                    -((px - qx) ** 2 + (py - qy) ** 2) / (2 * sigma_xy**2) - colour / (2 * sigma_rgb**2)
                )
    return out


def brute_crf(probs: torch.Tensor, W: torch.Tensor, weight: float) -> torch.Tensor:
    """weight · −Σ_n Σ_k Σ_pq W_pq S_kp S_kq / B, by explicit sums over classes."""
    s = probs.flatten(2).double()  # B×K×N
    total = 0.0
    for n in range(s.shape[0]):
        for k in range(s.shape[1]):
            total = total + s[n, k] @ W[n] @ s[n, k]
    return -weight * total / s.shape[0]


def brute_nc(probs: torch.Tensor, W: torch.Tensor, weight: float) -> torch.Tensor:
    """weight · mean_n Σ_k S_kᵀW(1 − S_k) / (dᵀS_k), d = W·1: one denominator per class."""
    s = probs.flatten(2).double()
    total = 0.0
    for n in range(s.shape[0]):
        d = W[n].sum(1)
        for k in range(s.shape[1]):
            total = total + (s[n, k] @ W[n] @ (1 - s[n, k])) / (d @ s[n, k])
    return weight * total / s.shape[0]


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 4, 5), generator=g).float()
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    return image, logits


def value_and_grad(loss_fn, logits: torch.Tensor):
    leaf = logits.clone().requires_grad_(True)
    value = loss_fn(torch.softmax(leaf, 1))
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach().double(), grad


def test_dense_crf_loss_exact_matches_pairwise_sum(tiny):
    image, logits = tiny
    W = kernel_matrix(image, 3.0, 40.0)
    loss = DenseCRFLoss(weight=1e-2, sigma_rgb=40.0, sigma_xy=3.0, scale_factor=1.0, kernel="exact", kernel_height=1)
    value, grad = value_and_grad(lambda p: loss(p, image), logits)
    ref_value, ref_grad = value_and_grad(lambda p: brute_crf(p, W, 1e-2), logits)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_dense_crf_loss_weight_is_in_the_reference_units(tiny):
    """The reference's lattice returns 1/1.80 of the Gaussian sum: the default weight means what it means there."""
    image, logits = tiny
    probs = torch.softmax(logits, 1)
    W = kernel_matrix(image, 3.0, 40.0)
    loss = DenseCRFLoss(weight=1e-2, sigma_rgb=40.0, sigma_xy=3.0, scale_factor=1.0, kernel="exact")(probs, image)
    torch.testing.assert_close(loss.double(), brute_crf(probs, W, 1e-2) / 1.80, rtol=1e-5, atol=1e-8)


def test_dense_crf_loss_accepts_logits(tiny):
    image, logits = tiny
    on_probs = DenseCRFLoss(1.0, scale_factor=1.0, kernel="exact")(torch.softmax(logits, 1), image)
    on_logits = DenseCRFLoss(1.0, scale_factor=1.0, kernel="exact", from_logits=True)(logits, image)
    torch.testing.assert_close(on_probs, on_logits)


def test_roi_removes_padding_pixels_from_every_pair(tiny):
    image, logits = tiny
    roi = torch.ones(2, 4, 5)
    roi[:, :, 3:] = 0
    loss = DenseCRFLoss(weight=1.0, sigma_rgb=40.0, sigma_xy=3.0, scale_factor=1.0, kernel="exact", kernel_height=1)
    value, grad = value_and_grad(lambda p: loss(p, image, roi), logits)
    inside = (slice(None), slice(None), slice(None), slice(0, 3))
    W = kernel_matrix(image[inside], 3.0, 40.0)
    ref_value, ref_grad = value_and_grad(lambda p: brute_crf(p, W, 1.0), logits[inside].contiguous())
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad[inside], ref_grad, rtol=1e-4, atol=1e-7)
    assert float(grad[..., 3:].abs().max()) == 0.0


def test_scale_factor_filters_the_downscaled_image_and_softmax():
    """As the reference: floor(size × scale), the image by nearest-neighbour sampling (every other pixel here, from
    the first), the softmax bilinearly."""
    image = structured_image(9, 13)
    probs = smooth_probs(2, 3, 9, 13)
    loss = DenseCRFLoss(1.0, sigma_rgb=20.0, sigma_xy=8.0, scale_factor=0.5, kernel="exact", kernel_height=1)
    value = loss(probs, image)
    small = image[:, :, 0:8:2, 0:12:2]
    small_probs = torch.nn.functional.interpolate(probs, size=(4, 6), mode="bilinear")
    ref = brute_crf(small_probs, kernel_matrix(small, 4.0, 20.0), 1.0)
    torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=1e-6)


def test_permutohedral_crf_loss_is_close_to_exact():
    """Measured on these inputs: value −0.3%, gradient cosine 0.995 (at scale 0.5, i.e. 20×24: −6.7%, 0.995)."""
    image = structured_image()
    logits = torch.log(smooth_probs(2, 5, 40, 48)).double()
    losses = {k: DenseCRFLoss(1e-4, sigma_xy=12.0, scale_factor=1.0, kernel=k) for k in ("exact", "permutohedral")}
    (v_exact, g_exact), (v_lattice, g_lattice) = (
        value_and_grad(lambda p, k=k: losses[k](p, image), logits) for k in losses
    )
    assert float(v_lattice / v_exact) == pytest.approx(1.0, abs=0.02)
    cosine = torch.nn.functional.cosine_similarity(g_lattice.flatten(), g_exact.flatten(), dim=0)
    assert float(cosine) > 0.99


def test_local_kernel_matches_windowed_pairs(tiny):
    image, logits = tiny
    W = kernel_matrix(image, 3.0, 40.0)
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    inside = ((ys[:, None] - ys[None]).abs() <= 1) & ((xs[:, None] - xs[None]).abs() <= 1)
    loss = DenseCRFLoss(1.0, sigma_rgb=40.0, sigma_xy=3.0, scale_factor=1.0, kernel="local", window=3, kernel_height=1)
    value, grad = value_and_grad(lambda p: loss(p, image), logits)
    ref_value, ref_grad = value_and_grad(lambda p: brute_crf(p, W * inside, 1.0), logits)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel", ["exact", "permutohedral", "local"])
def test_crf_loss_prefers_boundaries_on_image_edges(kernel):
    """Dark left half, bright right half: a split on the edge costs less than one through the dark region."""
    h, w = 24, 32
    image = torch.zeros(1, 3, h, w)
    image[..., w // 2 :] = 200.0
    probs_edge, probs_cut = torch.zeros(1, 2, h, w), torch.zeros(1, 2, h, w)
    probs_edge[:, 0, :, : w // 2], probs_edge[:, 1, :, w // 2 :] = 1.0, 1.0
    probs_cut[:, 0, :, : w // 4], probs_cut[:, 1, :, w // 4 :] = 1.0, 1.0
    loss = DenseCRFLoss(1e-3, sigma_xy=20.0, scale_factor=1.0, kernel=kernel, window=7)
    assert float(loss(probs_edge, image)) < float(loss(probs_cut, image))


def test_normalized_cut_loss_matches_per_class_formula(tiny):
    image, logits = tiny
    W = kernel_matrix(image, 3.0, 40.0)
    loss = NormalizedCutLoss(0.5, sigma_rgb=40.0, sigma_xy=3.0, scale_factor=1.0, kernel="exact")
    value, grad = value_and_grad(lambda p: loss(p, image), logits)
    ref_value, ref_grad = value_and_grad(lambda p: brute_nc(p, W, 0.5), logits)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_normalized_cut_normalises_each_class_by_its_own_volume():
    """A big uniform class and a small one: the single-denominator variant gives a different (wrong) value."""
    h, w = 4, 6
    image = torch.zeros(1, 3, h, w)
    probs = torch.zeros(1, 2, h, w)
    probs[:, 0] = 1.0
    probs[:, 0, :2, :2], probs[:, 1, :2, :2] = 0.0, 1.0  # class 1: a 2×2 corner
    loss = NormalizedCutLoss(1.0, sigma_xy=2.0, scale_factor=1.0, kernel="exact")
    value = float(loss(probs, image))
    W = kernel_matrix(image, 2.0, 15.0)[0]
    s = probs.flatten(2)[0].double()
    d = W.sum(1)
    cuts = [float(s[k] @ W @ (1 - s[k])) for k in range(2)]
    per_class = sum(cuts[k] / float(d @ s[k]) for k in range(2))
    single = sum(cuts) / float(d.sum())
    assert value == pytest.approx(per_class, rel=1e-5)
    assert abs(per_class - single) > 0.5 * per_class  # the hand-built case tells them apart
    assert cuts[0] == pytest.approx(cuts[1], rel=1e-6)  # the same cut, counted against different volumes


def test_entropy_loss_values(tiny):
    _, logits = tiny
    probs = torch.softmax(logits, 1)
    explicit = -(probs * probs.log()).sum(1).mean()
    torch.testing.assert_close(EntropyLoss(2.0)(probs).double(), 2 * explicit)
    torch.testing.assert_close(EntropyLoss(2.0, from_logits=True)(logits).double(), 2 * explicit)
    roi = torch.zeros(2, 4, 5)
    roi[0, :2] = 1
    masked = -(probs * probs.log()).sum(1)[0, :2].mean()
    torch.testing.assert_close(EntropyLoss()(probs, roi).double(), masked)
    uniform = torch.full((1, 4, 2, 2), 0.25)
    assert float(EntropyLoss()(uniform)) == pytest.approx(math.log(4))


def test_bad_kernel_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown kernel"):
        DenseCRFLoss(kernel="grid")
    with pytest.raises(ValueError, match="scale_factor"):
        NormalizedCutLoss(scale_factor=0.0)
