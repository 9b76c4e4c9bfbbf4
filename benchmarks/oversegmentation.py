"""Which over-segmentation should stand in for SPML's HED + UCM regions? Measured against the voc454 masks.

    python -m benchmarks.oversegmentation [--data-root ../shared/data] [--split train] [--max-images N]

For each setting, over the split's images: the median number of regions per image, the achievable segmentation
accuracy (ASA: the fraction of labelled pixels whose region's majority class is their class, the best any labelling
of the regions can do), the boundary recall (the fraction of mask-boundary pixels within 2 px of a region boundary)
and the median seconds per image. SPML's relation needs regions that never straddle two classes (high ASA) yet are
large enough to tie many pixels together (few regions).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from scipy import ndimage

from benchmarks.common import entry_point
from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.pseudo.oversegment import OversegmentConfig, oversegment

SETTINGS = {
    "felzenszwalb scale 100": OversegmentConfig(method="felzenszwalb", scale=100),
    "felzenszwalb scale 300 (default)": OversegmentConfig(method="felzenszwalb", scale=300),
    "felzenszwalb scale 800": OversegmentConfig(method="felzenszwalb", scale=800),
    "slic 50": OversegmentConfig(method="slic", segments=50),
    "slic 100": OversegmentConfig(method="slic", segments=100),
    "slic 200": OversegmentConfig(method="slic", segments=200),
}


def boundaries(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    return edge


def scores(regions: np.ndarray, mask: np.ndarray) -> tuple[float, int, float, int]:
    """(ASA correct pixels, labelled pixels, boundary pixels recalled, boundary pixels)."""
    labelled = mask != 255
    counts = np.zeros((regions.max() + 1, 256), np.int64)
    np.add.at(counts, (regions[labelled], mask[labelled]), 1)
    correct = int(counts.max(1).sum())
    gt_edge = boundaries(np.where(labelled, mask, 255)) & labelled
    near = ndimage.binary_dilation(boundaries(regions), iterations=2)
    return correct, int(labelled.sum()), int((gt_edge & near).sum()), int(gt_edge.sum())


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("oversegmentation", __doc__)
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args(argv)
    dataset = SegmentationDataset(voc_layout(args.data_root / "voc454"), args.split, kinds=("mask",))
    samples = [dataset[i] for i in range(len(dataset) if args.max_images is None else args.max_images)]
    print(f"voc454 {args.split}, {len(samples)} images (masks: 255 = ignore, left out)")
    print("| setting | regions / image (median) | ASA | boundary recall (2 px) | s / image (median) |")
    print("|---|---|---|---|---|")
    for name, cfg in SETTINGS.items():
        totals, counts, times = np.zeros(4), [], []
        for sample in samples:
            start = time.perf_counter()
            regions = oversegment(sample.image, cfg)
            times.append(time.perf_counter() - start)
            counts.append(int(regions.max()) + 1)
            totals += scores(regions, sample.maps["mask"])
        print(f"| {name} | {statistics.median(counts):.0f} | {totals[0] / totals[1]:.3f} | "
              f"{totals[2] / totals[3]:.3f} | {statistics.median(times):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
