"""Metrics against hand-computed values: confusion-matrix IoU / accuracy, boundary F, J&F, table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from weakseg.engine.metrics import (
    BoundaryFScore,
    ConfusionMatrix,
    SegmentationMetrics,
    average_precision,
    boundary_f_binary,
    boundary_map,
    format_table,
    multilabel_map,
)

# 3 classes, 4×4, two ignore pixels (bottom right).
TARGET = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [2, 2, 255, 255],
    ]
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 2],
        [2, 2, 2, 0],
        [2, 1, 0, 0],
    ]
)
# By hand over the 14 labelled pixels (rows GT, cols prediction):
#   GT 0: 3 → 0, 1 → 1          GT 1: 3 → 1, 1 → 2          GT 2: 1 → 0, 1 → 1, 4 → 2
# GT totals 4, 4, 6; prediction totals 4, 5, 5.
HAND_CONFUSION = [[3, 1, 0], [0, 3, 1], [1, 1, 4]]
HAND_IOU = [3 / (4 + 4 - 3), 3 / (4 + 5 - 3), 4 / (6 + 5 - 4)]  # 0.6, 0.5, 4/7


def square(top: int, left: int, size: int = 3, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    """A boolean size×size square in an otherwise empty image."""
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_confusion_matrix_hand_computed() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    out = cm.compute()
    assert out["confusion"] == HAND_CONFUSION
    assert cm.matrix.dtype == torch.int64 and cm.matrix.device.type == "cpu"
    assert out["per_class_iou"] == pytest.approx(HAND_IOU)
    assert out["miou"] == pytest.approx(sum(HAND_IOU) / 3)
    assert out["pixel_accuracy"] == pytest.approx(10 / 14)
    assert out["mean_accuracy"] == pytest.approx((3 / 4 + 3 / 4 + 4 / 6) / 3)


def test_ignore_pixels_are_skipped_whatever_the_prediction() -> None:
    cm = ConfusionMatrix(3)
    pred = PRED.copy()
    pred[TARGET == 255] = 1  # changing predictions under ignore changes nothing
    cm.update(pred, TARGET)
    assert cm.compute()["confusion"] == HAND_CONFUSION
    assert int(cm.matrix.sum()) == 14


def test_absent_classes_are_nan_and_excluded() -> None:
    cm = ConfusionMatrix(5)
    cm.update(PRED, TARGET)
    out = cm.compute()
    assert out["per_class_iou"][:3] == pytest.approx(HAND_IOU)
    assert all(math.isnan(v) for v in out["per_class_iou"][3:])
    assert out["miou"] == pytest.approx(sum(HAND_IOU) / 3)
    assert out["mean_accuracy"] == pytest.approx((3 / 4 + 3 / 4 + 4 / 6) / 3)


def test_class_only_in_prediction_counts_as_zero() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1]), np.array([0, 0, 0]))
    out = cm.compute()
    assert out["per_class_iou"][:2] == pytest.approx([1 / 3, 0.0])
    assert math.isnan(out["per_class_iou"][2])
    assert out["miou"] == pytest.approx(1 / 6)
    assert out["mean_accuracy"] == pytest.approx(1 / 3)  # class 1 has no GT pixels


def test_empty_matrix_gives_nan() -> None:
    out = ConfusionMatrix(2).compute()
    assert math.isnan(out["miou"]) and math.isnan(out["pixel_accuracy"]) and math.isnan(out["mean_accuracy"])


def test_batch_equals_one_by_one_and_merge() -> None:
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 4, size=(3, 6, 7))
    targets = rng.integers(0, 4, size=(3, 6, 7))
    targets[rng.random(targets.shape) < 0.2] = 255
    batch, single, merged = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    batch.update(preds, targets)
    for p, t in zip(preds, targets, strict=True):
        single.update(p, t)
    parts = [ConfusionMatrix(4) for _ in range(3)]
    for part, p, t in zip(parts, preds, targets, strict=True):
        part.update(p, t)
    merged.merge(parts[0])
    merged += parts[1]
    merged += parts[2]
    assert torch.equal(batch.matrix, single.matrix)
    assert torch.equal(batch.matrix, merged.matrix)
    batch.reset()
    assert int(batch.matrix.sum()) == 0


def test_torch_and_numpy_inputs_agree() -> None:
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED, TARGET)
    b.update(torch.from_numpy(PRED).to(torch.uint8), torch.from_numpy(TARGET).to(torch.uint8))
    assert torch.equal(a.matrix, b.matrix)


def test_invalid_inputs_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.full((2, 2), 3), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.full((2, 2), -1), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="target"):
        cm.update(np.zeros((2, 2), dtype=int), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), dtype=int), np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="integers"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(4))


def test_boundary_map_ring_and_border() -> None:
    ring = boundary_map(square(2, 2))
    assert ring.sum() == 8 and not ring[3, 3]  # 3×3 square: all but the centre
    corner = boundary_map(square(0, 0, size=3, shape=(5, 5)))
    # The image border is not a boundary: only the pixels facing the inside of the image are.
    expected = np.zeros((5, 5), dtype=bool)
    expected[2, :3] = expected[:3, 2] = True
    assert np.array_equal(corner, expected)
    assert not boundary_map(np.ones((4, 4), dtype=bool)).any()


def test_boundary_f_identical_masks() -> None:
    assert boundary_f_binary(square(2, 2), square(2, 2), 0.008) == (1.0, 1.0, 1.0)


def test_boundary_f_shifted_square_by_hand() -> None:
    gt, pred = square(2, 2), square(2, 3)  # shifted right by 1 px
    assert boundary_f_binary(pred, gt, 2.0) == (1.0, 1.0, 1.0)
    assert boundary_f_binary(pred, gt, 1.0) == (1.0, 1.0, 1.0)  # distance ≤ 1 px
    # Exact matching (tolerance 0.05 × diag(8×8) = 0.57 px): the rings share (2,3), (2,4), (4,3), (4,4),
    # i.e. 4 of 8 pixels in each → precision = recall = F = 1/2.
    assert boundary_f_binary(pred, gt, 0.05) == pytest.approx((0.5, 0.5, 0.5))


def test_boundary_f_fraction_of_diagonal() -> None:
    gt, pred = square(2, 2), square(2, 4)  # shifted right by 2 px
    # Predicted ring to GT ring: (2,4), (3,4), (4,4) at 0; (2,5), (4,5) at 1; (2,6), (3,6), (4,6) at 2.
    diag = math.hypot(8, 8)
    assert boundary_f_binary(pred, gt, 2.0)[2] == 1.0
    assert boundary_f_binary(pred, gt, 0.2)[2] == 1.0  # 2.26 px
    assert 0.15 * diag < 2 and 0.2 * diag > 2
    assert boundary_f_binary(pred, gt, 0.15) == pytest.approx((5 / 8, 5 / 8, 5 / 8))  # 1.70 px
    assert boundary_f_binary(pred, gt, 1.7) == pytest.approx((5 / 8, 5 / 8, 5 / 8))


def test_boundary_f_empty_cases() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    assert boundary_f_binary(empty, empty, 2.0) == (1.0, 1.0, 1.0)
    assert boundary_f_binary(empty, square(2, 2), 2.0) == (1.0, 0.0, 0.0)
    assert boundary_f_binary(square(2, 2), empty, 2.0) == (0.0, 1.0, 0.0)
    full = np.ones((8, 8), dtype=bool)  # no boundary: the image border does not count
    assert boundary_f_binary(full, full, 2.0) == (1.0, 1.0, 1.0)


def test_boundary_f_valid_mask() -> None:
    gt, pred = square(2, 2), square(2, 3)
    valid = np.ones((8, 8), dtype=bool)
    valid[3] = False
    valid[:, [2, 5]] = False  # leaves only the shared pixels (2,3), (2,4), (4,3), (4,4)
    assert boundary_f_binary(pred, gt, 0.05, valid=valid) == (1.0, 1.0, 1.0)
    assert boundary_f_binary(pred, gt, 0.05, valid=np.zeros((8, 8), dtype=bool)) == (1.0, 1.0, 1.0)


def two_images() -> tuple[np.ndarray, np.ndarray]:
    """Image 0: perfect square of class 1. Image 1: the predicted square shifted right by 1 px."""
    target = np.stack([square(2, 2), square(2, 2)]).astype(np.int64)
    pred = np.stack([square(2, 2), square(2, 3)]).astype(np.int64)
    return pred, target


def test_boundary_fscore_per_class_by_hand() -> None:
    pred, target = two_images()
    bf = BoundaryFScore(3, tolerance=0.05)  # exact matching on 8×8
    for p, t in zip(pred, target, strict=True):
        bf.update(p, t)
    out = bf.compute()
    # Image 1, class 1: F = 1/2 (see above). Class 0 (background): its boundary is the 12-pixel ring just
    # outside each square; the two rings share (1,3), (1,4), (5,3), (5,4) → P = R = F = 4/12.
    assert out["per_class_boundary_f"][:2] == pytest.approx([(1 + 1 / 3) / 2, (1 + 0.5) / 2])
    assert math.isnan(out["per_class_boundary_f"][2])
    assert out["boundary_f"] == pytest.approx(((1 + 1 / 3) / 2 + 0.75) / 2)


def test_boundary_fscore_ignore_handling() -> None:
    pred, target = two_images()
    p, t = pred[1], target[1].copy()
    t[:, 7] = 255
    t[3, 6] = 255
    for band in (False, True):
        bf = BoundaryFScore(2, tolerance=0.05, ignore_band=band)
        bf.update(p, t)
        valid = t != 255 if band else None
        expected = [boundary_f_binary(p == c, t == c, 0.05, valid)[2] for c in range(2)]
        assert bf.compute()["per_class_boundary_f"] == pytest.approx(expected)
    bf = BoundaryFScore(2)
    bf.update(np.zeros((4, 4), dtype=int), np.full((4, 4), 255))  # class 0 only in the prediction
    assert bf.compute()["per_class_boundary_f"][0] == 1.0  # no boundary in either map
    assert math.isnan(bf.compute()["per_class_boundary_f"][1])
    with pytest.raises(ValueError, match="prediction"):
        bf.update(np.full((4, 4), 2), np.zeros((4, 4), dtype=int))


def test_segmentation_metrics_jf_batch_and_single() -> None:
    pred, target = two_images()
    batch = SegmentationMetrics(3, boundary_tolerance=0.05)
    batch.update(torch.from_numpy(pred), torch.from_numpy(target))
    single = SegmentationMetrics(3, boundary_tolerance=0.05)
    for p, t in zip(pred, target, strict=True):
        single.update(p, t)
    a, b = batch.compute(), single.compute()
    assert set(a) == {
        "miou",
        "per_class_iou",
        "pixel_accuracy",
        "mean_accuracy",
        "boundary_f",
        "per_class_boundary_f",
        "jf",
        "confusion",
    }
    np.testing.assert_equal(a, b)
    assert a["jf"] == pytest.approx((a["miou"] + a["boundary_f"]) / 2)
    assert a["boundary_f"] == pytest.approx(((1 + 1 / 3) / 2 + 0.75) / 2)
    # Class 1: 18 GT and 18 predicted pixels, 9 + 6 of them correct → IoU 15 / (18 + 18 - 15).
    assert a["per_class_iou"][1] == pytest.approx(15 / 21)
    merged = SegmentationMetrics(3, boundary_tolerance=0.05).merge(batch)
    np.testing.assert_equal(merged.compute(), a)
    batch.reset()
    assert math.isnan(batch.compute()["jf"])


def test_format_table() -> None:
    rows = [{"name": "voc", "miou": 0.71234, "n": 1449}, {"name": "camvid-long", "miou": float("nan")}]
    lines = format_table(rows, ["name", "miou", "n"]).splitlines()
    assert lines == [
        "name          miou     n",
        "-----------  -----  ----",
        "voc          0.712  1449",
        "camvid-long    nan",
    ]


def test_average_precision_counts_tied_scores_as_one_threshold() -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    # Thresholds 0.9 (precision 1, recall 1/2) and 0.5 (precision 2/3, recall 1): 1/2 · 1 + 1/2 · 2/3.
    assert average_precision(scores, np.array([True, False, True, False])) == pytest.approx(5 / 6)
    assert math.isnan(average_precision(scores, np.zeros(4, dtype=bool)))


def test_average_precision_without_ties_is_the_mean_precision_at_each_positive() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, positive = rng.permutation(30) / 30.0, rng.random(30) < 0.3
        positive[0] = True
        ranked = positive[np.argsort(-scores)]
        precisions = [ranked[: i + 1].mean() for i in np.flatnonzero(ranked)]
        assert average_precision(scores, positive) == pytest.approx(np.mean(precisions))


def test_multilabel_map_averages_the_classes_that_occur() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.1, 0.3, 0.6]])
    present = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    result = multilabel_map(scores, present, ["a", "b", "c"])
    assert result["per_class_ap"]["a"] == 1.0 and result["per_class_ap"]["b"] == 1.0
    assert math.isnan(result["per_class_ap"]["c"]) and result["map"] == 1.0
