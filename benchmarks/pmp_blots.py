"""How much of the image do PMP's point blots label, and how correctly? Measured against the voc454 masks.

    python benchmarks/pmp_blots.py [--split train] [--every 4]

The points are the benchmark's (one per component at its distance-transform maximum, background included; seed 0).
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
from weakseg.data.simulate import LabelProtocol, derive_points, image_rng, stable_int
from weakseg.pseudo.point_blots import UNLABELLED, PointBlotConfig, point_blots

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
    args = parser.parse_args()
    dataset = SegmentationDataset(voc_layout(args.data), args.split, kinds=("mask",))
    samples = [dataset[i] for i in range(0, len(dataset), args.every)]
    protocol = LabelProtocol()
    points = [derive_points(s.mask, dataset.class_set, protocol, image_rng(0, s.image_id, "points")) for s in samples]
    background, ignore = dataset.class_set.background, dataset.class_set.ignore_index
    print(f"voc454 {args.split}, {len(samples)} images (every {args.every}-th), the benchmark's points")
    print(f"(default: β {DEFAULT.beta:g}, confidence {DEFAULT.confidence:g}, {DEFAULT.rounds} rounds)")
    columns = ("coverage", "precision", "object precision", "object recall", "images under 1%", "s / image (median)")
    print("| setting | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    masks = [s.mask[s.mask != ignore] for s in samples]
    share = sum(int((m == background).sum()) for m in masks) / sum(m.size for m in masks)
    print(f"| every pixel background (reference) | 1.000 | {share:.3f} | – | 0.000 | 0.00 | – |")
    for name, cfg in SETTINGS.items():
        labelled = correct = scored = objects = found = sparse = claimed = right = 0
        pixels, times = 0, []
        for sample, pts in zip(samples, points, strict=True):
            start = time.perf_counter()
            blots = point_blots(sample.image, pts, cfg, seed=stable_int(sample.image_id)).astype(np.int64)
            times.append(time.perf_counter() - start)
            mask, has = sample.mask.astype(np.int64), blots != UNLABELLED
            known = has & (mask != ignore)
            is_object = (mask != ignore) & (mask != background)
            labelled += int(has.sum())
            pixels += has.size
            sparse += int(has.mean() < 0.01)
            scored += int(known.sum())
            correct += int((blots[known] == mask[known]).sum())
            claims = known & (blots != background)
            claimed += int(claims.sum())
            right += int((blots[claims] == mask[claims]).sum())
            objects += int(is_object.sum())
            found += int((is_object & (blots == mask)).sum())
        print(f"| {name} | {labelled / pixels:.3f} | {correct / max(scored, 1):.3f} | "
              f"{right / max(claimed, 1):.3f} | {found / max(objects, 1):.3f} | "
              f"{sparse / len(samples):.2f} | {statistics.median(times):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
