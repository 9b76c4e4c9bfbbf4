"""Dense CRF post-processing: against explicit kernel matrices, lattice vs exact, and its effect on a boundary."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from weakseg.pseudo import DenseCRF


def structured_image(b: int, h: int, w: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``B×3×H×W`` uint8 images (background, a rectangle and a disc, mild noise) and their ``B×H×W`` labels 0–2."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = torch.zeros(b, h, w, dtype=torch.int64)
    for i in range(b):
        top, left = (int(v) for v in torch.randint(0, h // 3, (2,), generator=g))
        labels[i, top : top + h // 2, left : left + w // 2] = 1
        cy, cx, r = h * 0.65, w * (0.6 + 0.1 * i), min(h, w) / 4
        labels[i][(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = 2
    palette = torch.tensor([[40.0, 60.0, 50.0], [200.0, 80.0, 60.0], [90.0, 140.0, 230.0]])
    image = palette[labels].permute(0, 3, 1, 2) + 4 * torch.randn(b, 3, h, w, generator=g)
    return image.round().clamp(0, 255).to(torch.uint8), labels


def noisy_probs(labels: Tensor, k: int = 3, noise: float = 1.0, seed: int = 1) -> Tensor:
    """Softmax of a one-hot bump plus Gaussian noise: mostly right, wrong in scattered pixels."""
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()
    return (onehot + noise * torch.randn(onehot.shape, generator=g)).softmax(1)


def kernel_matrix(pixels: list[tuple[int, int]], colour: Tensor, sigma_xy: float, sigma_rgb: float | None) -> Tensor:
    """``exp(−|Δxy|²/2σ_xy² − |ΔI|²/2σ_rgb²)`` for every pair of ``pixels``, one entry at a time (float64)."""
    matrix = torch.zeros(len(pixels), len(pixels), dtype=torch.float64)
    for a, (ya, xa) in enumerate(pixels):
        for c, (yc, xc) in enumerate(pixels):
            exponent = ((ya - yc) ** 2 + (xa - xc) ** 2) / (2 * sigma_xy**2)
            if sigma_rgb is not None:
                exponent += float((colour[:, ya, xa] - colour[:, yc, xc]).square().sum()) / (2 * sigma_rgb**2)
            matrix[a, c] = math.exp(-exponent)
    return matrix


def reference_crf(probs: Tensor, image: Tensor, valid: Tensor, crf: DenseCRF) -> Tensor:
    """The mean-field loop written plainly in float64, with explicit kernel matrices over the valid pixels."""
    out = probs.double().clone()
    for i in range(probs.shape[0]):
        pixels = [(y, x) for y in range(probs.shape[2]) for x in range(probs.shape[3]) if valid[i, y, x]]
        colour = image[i].double()
        kernels = []
        for weight, matrix in (
            (crf.gaussian_weight, kernel_matrix(pixels, colour, crf.gaussian_sigma_xy, None)),
            (crf.bilateral_weight, kernel_matrix(pixels, colour, crf.bilateral_sigma_xy, crf.bilateral_sigma_rgb)),
        ):
            degree = matrix.sum(1)
            kernels.append(weight * matrix / torch.sqrt(degree[:, None] * degree[None, :]))
        minus_unary = torch.stack([probs[i, :, y, x] for y, x in pixels]).double().clamp(min=crf.min_prob).log()
        q = minus_unary.softmax(1)
        for _ in range(crf.iterations):
            q = (minus_unary + sum(matrix @ q for matrix in kernels)).softmax(1)
        for (y, x), row in zip(pixels, q, strict=True):
            out[i, :, y, x] = row
    return out


@pytest.mark.parametrize(
    "crf",
    [
        DenseCRF(filter="exact"),
        DenseCRF(
            5,
            gaussian_sigma_xy=2.0,
            gaussian_weight=1.0,
            bilateral_sigma_xy=3.0,
            bilateral_sigma_rgb=30.0,
            bilateral_weight=2.0,
            filter="exact",
        ),
    ],
)
def test_matches_explicit_kernel_matrices(crf: DenseCRF) -> None:
    image, labels = structured_image(2, 6, 7)
    probs = noisy_probs(labels)
    probs[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # below the unary's clamp
    valid = torch.ones(2, 6, 7, dtype=torch.bool)
    valid[1, :, -2:] = False
    valid[0, 0, 3] = False
    expected = reference_crf(probs, image, valid, crf)
    torch.testing.assert_close(crf(probs, image, valid).double(), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, probs.double(), atol=1e-2)


def test_lattice_agrees_with_exact_filter() -> None:
    image, labels = structured_image(2, 32, 40)
    probs = noisy_probs(labels, noise=2.0)
    lattice, exact = DenseCRF()(probs, image), DenseCRF(filter="exact")(probs, image)
    # Measured: argmax agreement 0.998, mean |Δp| 0.0025 (0.996–0.998 and 0.002–0.003 over four seeds).
    assert (lattice.argmax(1) == exact.argmax(1)).float().mean() >= 0.98
    assert (lattice - exact).abs().mean() <= 0.01
    assert (exact.argmax(1) == labels).float().mean() > (probs.argmax(1) == labels).float().mean() + 0.3


@pytest.mark.parametrize("method", ["permutohedral", "exact"])
def test_moves_an_offset_boundary_to_the_image_edge(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    h, w, edge, offset = 16, 24, 12, 3
    xs = torch.arange(w).expand(h, w)
    truth = (xs >= edge).long()[None]
    image = torch.where(xs >= edge, 200.0, 50.0).expand(1, 3, h, w) + 3 * torch.randn(1, 3, h, w, generator=g)
    image = image.round().clamp(0, 255).to(torch.uint8)
    # Class 1 from three columns right of the edge, with pixel noise.
    logit = 0.5 * torch.where(xs >= edge + offset, 1.0, -1.0) + 0.5 * torch.randn(1, h, w, generator=g)
    probs = torch.stack([-logit, logit], 1).softmax(1)
    before = probs.argmax(1)
    after = DenseCRF(filter=method)(probs, image).argmax(1)
    assert (before[..., edge : edge + offset] == 0).float().mean() > 0.5
    assert (after[..., edge : edge + offset] == 1).all()
    assert (after == truth).sum() > (before == truth).sum()
    assert (after == truth).float().mean() >= 0.99


@pytest.mark.parametrize("method", ["permutohedral", "exact"])
def test_outputs_are_distributions_and_invalid_pixels_are_untouched(method: str) -> None:
    image, labels = structured_image(2, 20, 24)
    probs = noisy_probs(labels)
    valid = torch.ones(2, 20, 24, dtype=torch.bool)
    valid[0, :, 18:] = False
    valid[1, 15:] = False
    out = DenseCRF(filter=method)(probs, image, valid)
    assert out.shape == probs.shape and out.dtype == probs.dtype
    torch.testing.assert_close(out.sum(1), torch.ones(2, 20, 24))
    inside = valid[:, None].expand_as(probs)
    assert torch.equal(out[~inside], probs[~inside])
    assert (out[inside] - probs[inside]).abs().max() > 0.1


def test_invalid_pixels_take_no_part_in_the_kernels() -> None:
    image, labels = structured_image(1, 10, 12)
    probs = noisy_probs(labels)
    valid = torch.ones(1, 10, 12, dtype=torch.bool)
    valid[:, :, 8:] = False
    crf = DenseCRF(filter="exact")
    out = crf(probs, image, valid)
    g = torch.Generator().manual_seed(5)
    other_image, other_probs = image.clone(), probs.clone()
    other_image[..., 8:] = torch.randint(0, 256, other_image[..., 8:].shape, generator=g, dtype=torch.uint8)
    other_probs[..., 8:] = torch.rand(other_probs[..., 8:].shape, generator=g).softmax(1)
    torch.testing.assert_close(crf(other_probs, other_image, valid)[..., :8], out[..., :8])


def test_zero_iterations_returns_the_input() -> None:
    image, labels = structured_image(2, 8, 9)
    probs = noisy_probs(labels)
    torch.testing.assert_close(DenseCRF(iterations=0)(probs, image), probs)


def test_batch_images_are_independent() -> None:
    image, labels = structured_image(3, 16, 20)
    probs = noisy_probs(labels)
    batched = DenseCRF()(probs, image)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], DenseCRF()(probs[i : i + 1], image[i : i + 1]))


def test_float_image_on_the_0_255_scale_equals_uint8() -> None:
    image, labels = structured_image(1, 12, 12)
    probs = noisy_probs(labels)
    torch.testing.assert_close(DenseCRF()(probs, image.float()), DenseCRF()(probs, image))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="filter"):
        DenseCRF(filter="local")
    with pytest.raises(ValueError, match="iterations"):
        DenseCRF(iterations=-1)
    with pytest.raises(ValueError, match="match"):
        DenseCRF()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
