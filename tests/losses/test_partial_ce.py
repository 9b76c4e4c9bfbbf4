"""Partial CE against an explicit per-pixel loop: values and gradients."""

from __future__ import annotations

import math

import torch

from weakseg.losses import PartialCrossEntropy


def _loop_pce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total, count = logits.new_zeros(()), 0
    b, k, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                label = int(target[i, y, x])
                if label == 255:
                    continue
                scores = logits[i, :, y, x]
                total = total - (scores[label] - torch.log(sum(torch.exp(scores[c]) for c in range(k))))
                count += 1
    return total / count


def test_matches_loop_values_and_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 6))
    target[torch.rand(2, 5, 6) < 0.7] = 255
    fast = PartialCrossEntropy()(logits, target)
    slow = _loop_pce(logits, target)
    torch.testing.assert_close(fast.double(), slow)
    (g_fast,) = torch.autograd.grad(fast, logits)
    (g_slow,) = torch.autograd.grad(slow, logits)
    torch.testing.assert_close(g_fast, g_slow)
    assert (g_fast.abs().sum(1)[target == 255] == 0).all()


def test_upsamples_low_resolution_logits() -> None:
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 8, 8), 255)
    target[0, 0, 0] = 1
    loss = PartialCrossEntropy()(logits, target)
    assert math.isclose(float(loss.detach()), math.log(3), rel_tol=1e-6)


def test_no_labelled_pixel_gives_zero_loss_with_a_graph() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = PartialCrossEntropy()(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
