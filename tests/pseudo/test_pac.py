"""PMP's PAC refiner against explicit loops on a tiny image; it keeps scores in a uniform region and damps them across
a colour edge."""

from __future__ import annotations

import pytest
import torch

from weakseg.pseudo.pac import PACRefiner, pac_layer


def loop_layer(scores: torch.Tensor, image: torch.Tensor, size: int, dilation: int) -> torch.Tensor:
    """Per pixel and class: softmax over the window of −|ΔX|₁/σ · μ, weighted mean of the scores; edges replicated."""
    _, k, h, w = scores.shape
    out = torch.zeros_like(scores)
    r = size // 2
    for i in range(h):
        for j in range(w):
            window = [
                (min(max(i + dy * dilation, 0), h - 1), min(max(j + dx * dilation, 0), w - 1))
                for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            ]  # fmt: skip
            colours = torch.stack([image[0, :, y, x] for y, x in window])  # O×3
            sigma = colours.std(0, unbiased=False).mean()
            for c in range(k):
                values = torch.stack([scores[0, c, y, x] for y, x in window])
                mu = values.mean()
                logits = torch.stack([-(image[0, :, i, j] - col).abs().sum() for col in colours]) / (sigma + 1e-5) * mu
                out[0, c, i, j] = (torch.softmax(logits, 0) * values).sum()
    return out


@pytest.mark.parametrize(("size", "dilation"), [(3, 1), (3, 2), (5, 1)])
def test_layer_matches_the_loop(size: int, dilation: int) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 5, 6, generator=g, dtype=torch.float64)
    scores = torch.softmax(torch.randn(1, 3, 5, 6, generator=g, dtype=torch.float64), 1)
    torch.testing.assert_close(pac_layer(scores, image, size, dilation), loop_layer(scores, image, size, dilation))


def test_uniform_region_keeps_its_scores_and_an_edge_stops_the_leak() -> None:
    image = torch.zeros(1, 3, 12, 12)
    image[..., 6:] = 1.0  # a strong colour edge between columns 5 and 6
    scores = torch.zeros(1, 2, 12, 12)
    scores[:, 0, :, :6] = 1.0  # class 0 on the left half, class 1 on the right
    scores[:, 1, :, 6:] = 1.0
    refiner = PACRefiner(kernel_sizes=(3, 3, 5), dilations=(1, 2, 1))
    refined = refiner(scores, image)
    assert refined[:, 0, :, :4].min() > 0.99  # inside the uniform region: kept
    flat = refiner(scores, torch.zeros(1, 3, 12, 12))  # the same scores on a uniform image
    leak_with_edge, leak_without = refined[0, 0, :, 6].mean(), flat[0, 0, :, 6].mean()
    assert leak_with_edge < 0.5 * leak_without  # damped across the colour edge
    assert ((refined >= 0) & (refined <= 1)).all()  # convex combinations of the inputs, per class


def test_the_paper_stack_runs_and_checks_its_arguments() -> None:
    refiner = PACRefiner()
    assert len(refiner.kernel_sizes) == 12 and refiner.dilations[-1] == 32
    out = refiner(torch.softmax(torch.randn(2, 4, 16, 16), 1), torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="one dilation per kernel size"):
        PACRefiner(kernel_sizes=(3,), dilations=(1, 2))
    with pytest.raises(ValueError, match="odd and positive"):
        PACRefiner(kernel_sizes=(4,), dilations=(1,))
