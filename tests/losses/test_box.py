"""BoxInst's box losses against explicit loops over boxes, pixels and neighbours (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from weakseg.losses import BoxProjectionLoss, PairwiseAffinityLoss
from weakseg.losses.box import box_class_masks, lab_similarity, neighbours

OFFSETS = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]  # 3×3, dilation 2


def test_neighbours_order_and_border():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    out = neighbours(x)
    for n, (dy, dx) in enumerate(OFFSETS):
        for i in range(5):
            for j in range(5):
                inside = 0 <= i + dy < 5 and 0 <= j + dx < 5
                assert out[0, 0, n, i, j] == (x[0, 0, i + dy, j + dx] if inside else 0)


def test_box_class_masks_union_and_stride():
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 4.0, 2], [4.0, 0.0, 12.0, 8.0, 2], [0.0, 8.0, 4.0, 12.0, 1]])]
    full = box_class_masks(boxes, 3, 12, 12)
    assert full[0, 2].sum() == 8 * 4 + 8 * 8 - 4 * 4 and full[0, 1].sum() == 16 and full[0, 0].sum() == 0
    coarse = box_class_masks(boxes, 3, 3, 3, stride=4)
    # a stride-4 cell is inside when its centre (4i + 2) is
    expected = full[..., 2::4, 2::4]
    assert torch.equal(coarse, expected)


def random_case(seed: int, size: tuple[int, int], boxes: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits B=2, K=3 and box masks, 1 on ``boxes`` = (image, class, rows, cols)."""
    torch.manual_seed(seed)
    logits = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    masks = torch.zeros(2, 3, *size, dtype=torch.float64)
    for b, c, rows, cols in boxes:
        masks[b, c, rows, cols] = 1
    return logits, masks


def loop_projection(logits, masks, valid):
    """Dice of the max-projections, one (image, class) pair, one axis, one sum term at a time."""
    probs = logits.softmax(1)
    losses = []
    for i in range(probs.shape[0]):
        for c in range(probs.shape[1]):
            if masks[i, c].sum() == 0:
                continue
            m = probs[i, c] * valid[i]
            term = 0.0
            for axis in (1, 0):
                pred, target = m.max(axis).values, masks[i, c].max(axis).values
                num = sum(p * t for p, t in zip(pred, target, strict=True))
                den = sum(p * p for p in pred) + sum(t * t for t in target) + 1e-5
                term = term + 1 - 2 * num / den
            losses.append(term)
    return sum(losses) / len(losses)


def test_projection_loss_matches_loops_and_gradient():
    boxes = [(0, 1, slice(1, 4), slice(2, 5)), (0, 2, slice(0, 2), slice(0, 7)), (1, 1, slice(3, 6), slice(0, 3))]
    logits, masks = random_case(0, (6, 7), boxes)
    valid = torch.ones(2, 6, 7, dtype=torch.bool)
    valid[1, :, 6:] = False
    loss = BoxProjectionLoss()(logits.softmax(1), masks, valid)
    reference = loop_projection(logits, masks, valid.double())
    assert loss.item() == pytest.approx(reference.item(), rel=1e-10)
    grad = torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(reference, logits)[0])


def test_projection_loss_is_zero_for_a_perfect_box_and_without_boxes():
    masks = torch.zeros(1, 2, 5, 5)
    masks[0, 1, 1:3, 1:4] = 1
    probs = torch.stack([1 - masks[:, 1], masks[:, 1]], 1)
    valid = torch.ones(1, 5, 5, dtype=torch.bool)
    assert BoxProjectionLoss()(probs, masks, valid).item() == pytest.approx(0.0, abs=1e-5)
    empty = BoxProjectionLoss()(probs.requires_grad_(), torch.zeros_like(masks), valid)
    assert empty.item() == 0.0
    empty.backward()


def loop_pairwise(logits, masks, similarity, threshold):
    probs = logits.softmax(1)
    b, k, h, w = probs.shape
    total, count = 0.0, 0
    for n in range(b):
        for c in range(k):
            for i in range(h):
                for j in range(w):
                    if masks[n, c, i, j] == 0:
                        continue
                    for e, (dy, dx) in enumerate(OFFSETS):
                        if not (0 <= i + dy < h and 0 <= j + dx < w) or similarity[n, e, i, j] < threshold:
                            continue
                        p, q = probs[n, c, i, j], probs[n, c, i + dy, j + dx]
                        total = total - torch.log(p * q + (1 - p) * (1 - q))
                        count += 1
    return total / max(count, 1)


def test_pairwise_loss_matches_loops_and_gradient():
    boxes = [(0, 1, slice(1, 5), slice(0, 4)), (1, 2, slice(2, 6), slice(2, 6)), (1, 1, slice(0, 3), slice(0, 3))]
    logits, masks = random_case(1, (6, 6), boxes)
    similarity = torch.rand(2, 8, 6, 6, dtype=torch.float64)
    for e, (dy, dx) in enumerate(OFFSETS):  # neighbours beyond the image have no similarity (lab_similarity)
        rows = [i for i in range(6) if not 0 <= i + dy < 6]
        cols = [j for j in range(6) if not 0 <= j + dx < 6]
        similarity[:, e, rows] = 0
        similarity[:, e, :, cols] = 0
    loss = PairwiseAffinityLoss(0.3)(logits, masks, similarity)
    reference = loop_pairwise(logits, masks, similarity, 0.3)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-9)
    grad = torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(reference, logits)[0])


def test_pairwise_loss_stays_finite_for_confident_logits():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    with torch.no_grad():
        logits[:, 1] = 60.0
    masks = torch.ones(1, 2, 4, 4)
    loss = PairwiseAffinityLoss()(logits, masks, torch.ones(1, 8, 4, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_lab_similarity_matches_loops():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (1, 3, 16, 20)).astype(np.float32))
    valid = torch.ones(1, 16, 20, dtype=torch.bool)
    valid[:, :, 16:] = False
    valid[:, 12:] = False
    out = lab_similarity(image, valid, stride=4)
    pooled = image.reshape(1, 3, 4, 4, 5, 4).mean((3, 5))
    lab = rgb2lab(pooled[0].permute(1, 2, 0).to(torch.uint8).numpy())
    inside = valid[0, 2::4, 2::4].numpy()
    assert out.shape == (1, 8, 4, 5)
    for e, (dy, dx) in enumerate(OFFSETS):
        for i in range(4):
            for j in range(5):
                ii, jj = i + dy, j + dx
                if 0 <= ii < 4 and 0 <= jj < 5 and inside[i, j] and inside[ii, jj]:
                    expected = math.exp(-np.linalg.norm(lab[i, j] - lab[ii, jj]) / 2.0)
                else:
                    expected = 0.0
                assert out[0, e, i, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
