"""How much of the image do PMP's point blots label, and how correctly? Measured against the voc454 masks.

    python benchmarks/pmp_blots.py [--split train] [--every 4] [--points-mode box-centres] [--settings NAME ...]

The points are the benchmark's (one per component at its distance-transform maximum, background included; seed 0),
or with ``--points-mode box-centres`` the paper's: the centre of every box of voc454's real ``boxes_coco.json`` plus
4 background points per object outside all boxes (``derive-labels --points-mode box-centres``).
For each random-walk setting, over every ``--every``-th image of the split: the coverage (fraction of pixels the
blots label), the precision (fraction of labelled pixels whose label is the mask's), the object precision (the same,
over the pixels labelled with an object class), the object recall (fraction of object pixels labelled with their
class), the share of images whose blots label under 1% of the pixels, and the
median seconds per image. The paper leaves the walk's settings open; blots are meant to add the pixels that are
"obviously" part of a point's object: precise first, then as large as precision allows. The default setting
(:class:`weakseg.pseudo.point_blots.PointBlotConfig`) is the one whose labels beat "every pixel background" on
precision.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.formats import read_coco_boxes
from weakseg.data.simulate import POINTS_MODES, LabelProtocol, derive_image_points
from weakseg.pseudo.point_blots import PointBlotConfig, point_blots
from weakseg.utils import stable_int

SCORES = ("coverage", "precision", "object precision", "object recall", "background share")


def label_counts(labels: np.ndarray, mask: np.ndarray, background: int | None, ignore: int) -> np.ndarray:
    """Pixel counts of a label map (``ignore`` = unlabelled) against a mask, to pool over images: all, labelled,
    labelled and scored, correct; labelled with an object class and scored, correct; object pixels, found with their
    class; labelled background. Without a background class (CamVid) every class counts as an object."""
    labelled = labels != ignore
    scored = labelled & (mask != ignore)
    labels_bg = labels == background if background is not None else np.zeros(labels.shape, bool)
    mask_bg = mask == background if background is not None else np.zeros(mask.shape, bool)
    claims = scored & ~labels_bg
    objects = (mask != ignore) & ~mask_bg
    return np.array([
        labels.size, labelled.sum(), scored.sum(), (labels[scored] == mask[scored]).sum(), claims.sum(),
        (labels[claims] == mask[claims]).sum(), objects.sum(), (objects & (labels == mask)).sum(),
        (labelled & labels_bg).sum(),
    ], dtype=np.float64)  # fmt: skip


def label_scores(counts: np.ndarray) -> tuple[float, ...]:
    """The :data:`SCORES` of pooled :func:`label_counts`."""
    pixels, labelled, scored, correct, claimed, right, objects, found, background = counts
    return (
        labelled / pixels,
        correct / max(scored, 1),
        right / max(claimed, 1),
        found / max(objects, 1),
        background / max(labelled, 1),
    )


DEFAULT = PointBlotConfig()
SETTINGS = {
    "β 130 (scikit-image's), confidence 0.9": replace(DEFAULT, beta=130.0, confidence=0.9),
    "β 1000, confidence 0.9": replace(DEFAULT, beta=1000.0, confidence=0.9),
    "β 1000, confidence 0.98 (default)": replace(DEFAULT, beta=1000.0, confidence=0.98),
    "β 3000, confidence 0.9": replace(DEFAULT, beta=3000.0, confidence=0.9),
    "β 1000, confidence 0.7": replace(DEFAULT, beta=1000.0, confidence=0.7),
    "β 1000, confidence 0.98, no perturbation rounds": replace(DEFAULT, beta=1000.0, confidence=0.98, rounds=0),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/voc454"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--every", type=int, default=4, help="use every N-th image of the split")
    parser.add_argument("--points-mode", choices=POINTS_MODES, default="component")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args()
    dataset = SegmentationDataset(voc_layout(args.data), args.split, kinds=("mask",))
    samples = [dataset[i] for i in range(0, len(dataset), args.every)]
    protocol = LabelProtocol(points_mode=args.points_mode)
    boxes = read_coco_boxes(args.data / "boxes_coco.json") if args.points_mode == "box-centres" else {}
    points = [
        derive_image_points(s.image_id, s.maps["mask"], dataset.class_set, protocol, boxes.get(s.image_id))
        for s in samples
    ]
    background, ignore = dataset.class_set.background, dataset.class_set.ignore_index
    described = "the benchmark's points" if args.points_mode == "component" else "box centres + 4 background points"
    print(f"voc454 {args.split}, {len(samples)} images (every {args.every}-th), {described}")
    print(f"(default: β {DEFAULT.beta:g}, confidence {DEFAULT.confidence:g}, {DEFAULT.rounds} rounds)")
    columns = (*SCORES[:4], "images under 1%", "s / image (median)")
    print("| setting | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    masks = [s.maps["mask"][s.maps["mask"] != ignore] for s in samples]
    share = sum(int((m == background).sum()) for m in masks) / sum(m.size for m in masks)
    print(f"| every pixel background (reference) | 1.000 | {share:.3f} | – | 0.000 | 0.00 | – |")
    for name in args.settings:
        cfg = SETTINGS[name]
        totals, sparse, times = np.zeros(9), 0, []
        for sample, pts in zip(samples, points, strict=True):
            start = time.perf_counter()
            blots = point_blots(sample.image, pts, cfg, seed=stable_int(sample.image_id))
            times.append(time.perf_counter() - start)
            counts = label_counts(blots, sample.maps["mask"], background, ignore)
            totals += counts
            sparse += int(counts[1] < 0.01 * counts[0])
        scores = " | ".join(f"{v:.3f}" for v in label_scores(totals)[:4])
        print(f"| {name} | {scores} | {sparse / len(samples):.2f} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
