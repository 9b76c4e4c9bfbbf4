"""Segmentation metrics: confusion-matrix IoU and accuracy, DAVIS-style boundary F-score, J&F; multi-label average
precision of an image classifier."""

from __future__ import annotations

import math
from numbers import Number

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from weakseg.data.classes import IGNORE_INDEX

ArrayLike = torch.Tensor | np.ndarray

__all__ = [
    "BoundaryFScore",
    "ConfusionMatrix",
    "SegmentationMetrics",
    "boundary_f_binary",
    "boundary_map",
    "format_table",
    "multilabel_map",
]


def _to_tensor(x: ArrayLike) -> torch.Tensor:
    """An int64 tensor of class ids from a tensor or numpy array (rejects floating-point input)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch tensor or numpy array, got {type(x).__name__}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"class ids must be integers, got dtype {t.dtype}")
    return t.long()


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """An int64 numpy array of class ids from a tensor or numpy array."""
    return _to_tensor(x).detach().cpu().numpy()


def _check_range(values: torch.Tensor | np.ndarray, num_classes: int, what: str) -> None:
    """Raise ValueError if any value lies outside [0, num_classes)."""
    size = values.size if isinstance(values, np.ndarray) else values.numel()
    if size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{what} values must lie in [0, {num_classes}), found range [{lo}, {hi}]")


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries, NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den, NaN where den is 0."""
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


class ConfusionMatrix:
    """A K×K int64 confusion matrix (rows = ground truth, columns = prediction), kept on the CPU."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @classmethod
    def of_counts(cls, counts: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
        """A matrix holding ``counts`` (``K×K``, rows = ground truth)."""
        matrix = cls(counts.shape[0], ignore_index)
        matrix.matrix += counts.to(torch.int64).cpu()
        return matrix

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a prediction / ground-truth pair of any equal shape, skipping ``ignore_index`` targets."""
        pred, target = _to_tensor(pred), _to_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        target = target.to(pred.device)
        keep = target != self.ignore_index
        _check_range(pred, self.num_classes, "prediction")
        gt, pr = target[keep], pred[keep]
        _check_range(gt, self.num_classes, "target")
        k = self.num_classes
        counts = torch.bincount(gt * k + pr, minlength=k * k)
        self.matrix += counts.reshape(k, k).cpu()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another worker); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix.zero_()

    def compute(self) -> dict:
        """IoU and accuracy; classes absent from both GT and prediction are NaN and left out of means."""
        m = self.matrix.numpy().astype(np.float64)
        tp, gt, pr = np.diag(m), m.sum(1), m.sum(0)
        iou = _ratio(tp, gt + pr - tp)
        total = m.sum()
        return {
            "miou": _nanmean(iou),
            "per_class_iou": iou.tolist(),
            "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
            "mean_accuracy": _nanmean(_ratio(tp, gt)),
            "confusion": self.matrix.tolist(),
        }


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Pixels of the region with a 4-neighbour outside it; the image border does not count as outside."""
    mask = np.asarray(mask, dtype=bool)
    p = np.pad(mask, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def boundary_f_binary(
    pred: np.ndarray, gt: np.ndarray, tolerance: float, valid: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Boundary precision, recall and F of two binary masks (DAVIS-style).

    The tolerance is ``tolerance`` pixels if ≥ 1, else ``tolerance`` × the image diagonal (DAVIS uses 0.008).
    A boundary pixel matches if one of the other map lies within that Euclidean distance. Pixels outside
    ``valid`` are removed from both boundary maps. Both maps empty gives (1, 1, 1); one empty gives F = 0
    (an empty prediction has precision 1 and recall 0, an empty GT precision 0 and recall 1).
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"expected two equal-shape 2-D masks, got {pred.shape} and {gt.shape}")
    tol = tolerance if tolerance >= 1 else tolerance * math.hypot(*gt.shape)
    pb, gb = boundary_map(pred), boundary_map(gt)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        pb, gb = pb & valid, gb & valid
    n_pred, n_gt = int(pb.sum()), int(gb.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0 or n_gt == 0:
        return float(n_pred == 0), float(n_gt == 0), 0.0
    # Crop to the boundaries' bounding box: all points involved lie inside it, so distances are unchanged.
    rows, cols = np.nonzero(pb | gb)
    crop = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    pb, gb = pb[crop], gb[crop]
    precision = float((distance_transform_edt(~gb)[pb] <= tol).mean())
    recall = float((distance_transform_edt(~pb)[gb] <= tol).mean())
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


class BoundaryFScore:
    """Per-class boundary F-score averaged over the images in which each class occurs.

    A class occurs in an image if it is in the ground truth (ignore pixels excluded) or the prediction.
    With ``ignore_band=False`` ignore pixels of the target count as "not this class" for the GT mask and the
    prediction is left as-is, so on VOC (a 5-px void band along object edges) the GT boundary runs along the
    inner edge of the band and a predicted edge in the middle of a 5-px band is ~2-3 px from it, well within
    the default tolerance (~5 px on a 500×375 image). With ``ignore_band=True`` boundary pixels inside ignore
    regions are dropped from both maps before matching; GT boundary pixels never lie there, so in effect only
    predicted ones are dropped, and a predicted edge lying wholly in the band leaves no boundary (F = 0).
    """

    def __init__(
        self,
        num_classes: int,
        tolerance: float = 0.008,
        ignore_index: int = IGNORE_INDEX,
        ignore_band: bool = False,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if tolerance <= 0:
            raise ValueError(f"tolerance must be positive, got {tolerance}")
        self.num_classes = num_classes
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.ignore_band = ignore_band
        self.sums = np.zeros(num_classes, dtype=np.float64)
        self.counts = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one H×W prediction / ground-truth pair."""
        pred, target = _to_numpy(pred), _to_numpy(target)
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(f"expected two equal-shape H×W maps, got {pred.shape} and {target.shape}")
        valid = target != self.ignore_index
        k = self.num_classes
        _check_range(pred, k, "prediction")
        _check_range(target[valid], k, "target")
        present = (np.bincount(pred.ravel(), minlength=k) > 0) | (np.bincount(target[valid], minlength=k) > 0)
        band = valid if self.ignore_band else None
        for c in np.flatnonzero(present):
            self.sums[c] += boundary_f_binary(pred == c, target == c, self.tolerance, band)[2]
            self.counts[c] += 1

    def merge(self, other: BoundaryFScore) -> BoundaryFScore:
        """Add another accumulator's sums and counts into this one; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.sums += other.sums
        self.counts += other.counts
        return self

    def reset(self) -> None:
        """Forget all images."""
        self.sums[:] = 0
        self.counts[:] = 0

    def compute(self) -> dict:
        """``boundary_f`` (mean over classes that occurred) and ``per_class_boundary_f`` (NaN if never)."""
        per_class = _ratio(self.sums, self.counts)
        return {"boundary_f": _nanmean(per_class), "per_class_boundary_f": per_class.tolist()}


class SegmentationMetrics:
    """IoU, accuracy, boundary F and J&F = (mIoU + boundary F) / 2 over a stream of predictions."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, boundary_tolerance: float = 0.008) -> None:
        self.confusion = ConfusionMatrix(num_classes, ignore_index)
        self.boundary = BoundaryFScore(num_classes, boundary_tolerance, ignore_index)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a B×H×W batch or one H×W image (torch or numpy)."""
        self.confusion.update(pred, target)
        pred_np, target_np = _to_numpy(pred), _to_numpy(target)
        if pred_np.ndim == 2:
            pred_np, target_np = pred_np[None], target_np[None]
        if pred_np.ndim != 3:
            raise ValueError(f"expected B×H×W or H×W maps, got shape {pred_np.shape}")
        for p, t in zip(pred_np, target_np, strict=True):
            self.boundary.update(p, t)

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add another accumulator's state into this one; returns self."""
        self.confusion.merge(other.confusion)
        self.boundary.merge(other.boundary)
        return self

    def reset(self) -> None:
        """Forget all images."""
        self.confusion.reset()
        self.boundary.reset()

    def compute(self) -> dict:
        """All scores: ``miou, per_class_iou, pixel_accuracy, mean_accuracy, boundary_f,
        per_class_boundary_f, jf, confusion``."""
        out = self.confusion.compute() | self.boundary.compute()
        out["jf"] = (out["miou"] + out["boundary_f"]) / 2
        return out


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of one class: ``Σ_n (R_n − R_{n−1}) P_n`` over the images ranked by descending score, each
    threshold taken at a distinct score (tied images enter together), as scikit-learn's ``average_precision_score``;
    NaN without positives."""
    positives = int(positive.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last image of each run of tied scores
    true_positives = np.cumsum(hits)[last]
    precision = true_positives / (last + 1)
    recall_gain = np.diff(np.r_[0.0, true_positives]) / positives
    return float((recall_gain * precision).sum())


def multilabel_map(scores: np.ndarray, present: np.ndarray, names: list[str] | None = None) -> dict:
    """Mean average precision of ``N×C`` image scores against ``N×C`` 0/1 class presence, over the classes present in
    some image; ``per_class_ap`` holds every class's (NaN: never present), keyed by ``names`` when given."""
    ap = [average_precision(scores[:, c], present[:, c] > 0) for c in range(scores.shape[1])]
    return {"map": _nanmean(np.array(ap)), "per_class_ap": dict(zip(names, ap, strict=True)) if names else ap}


def _cell(value: object) -> str:
    """Table text of one value: floats with 3 decimals, None as empty."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (missing keys blank); numeric columns right-aligned, others left."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), Number) and not isinstance(row.get(c), bool) for row in rows if c in row)
        for c in columns
    ]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def fmt(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    lines = [fmt(list(columns)), "  ".join("-" * w for w in widths)]
    lines += [fmt(line) for line in cells]
    return "\n".join(lines)
