"""How much of the image do PMP's point blots label, and how correctly? Measured against the voc454 masks.

    python -m benchmarks.pmp_blots [--data-root ../shared/data] [--split train] [--every 4]
                                   [--points-mode box-centres] [--settings NAME ...]

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

import statistics
import time
from dataclasses import replace

import numpy as np

from benchmarks.common import SCORES, entry_point, label_counts, label_scores
from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.formats import read_coco_boxes
from weakseg.data.simulate import POINTS_MODES, LabelProtocol, derive_image_points
from weakseg.pseudo.point_blots import PointBlotConfig, point_blots
from weakseg.utils import stable_int

DEFAULT = PointBlotConfig()
SETTINGS = {
    "β 130 (scikit-image's), confidence 0.9": replace(DEFAULT, beta=130.0, confidence=0.9),
    "β 1000, confidence 0.9": replace(DEFAULT, beta=1000.0, confidence=0.9),
    "β 1000, confidence 0.98 (default)": replace(DEFAULT, beta=1000.0, confidence=0.98),
    "β 3000, confidence 0.9": replace(DEFAULT, beta=3000.0, confidence=0.9),
    "β 1000, confidence 0.7": replace(DEFAULT, beta=1000.0, confidence=0.7),
    "β 1000, confidence 0.98, no perturbation rounds": replace(DEFAULT, beta=1000.0, confidence=0.98, rounds=0),
}


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("pmp_blots", __doc__)
    parser.add_argument("--split", default="train")
    parser.add_argument("--every", type=int, default=4, help="use every N-th image of the split")
    parser.add_argument("--points-mode", choices=POINTS_MODES, default="component")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args(argv)
    data = args.data_root / "voc454"
    dataset = SegmentationDataset(voc_layout(data), args.split, kinds=("mask",))
    samples = [dataset[i] for i in range(0, len(dataset), args.every)]
    protocol = LabelProtocol(points_mode=args.points_mode)
    boxes = read_coco_boxes(data / "boxes_coco.json") if args.points_mode == "box-centres" else {}
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
