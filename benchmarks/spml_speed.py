"""What SPML's loss costs next to the training step, on real voc454 crops.

    python benchmarks/spml_speed.py [--steps 4] [--data ../shared/data/voc454]

Builds one batch of 8 augmented 256² training crops with their Felzenszwalb regions and a scribble-like label
(every 16th row of the mask), then times forward + loss + backward + SGD for `pce` and for `spml` (scribble
weights) with the contrast over all pixels and over 1024 per image, one after the other in this process. Prints the
median seconds per step, the segments per batch and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import numpy as np
import torch
from steptime import build, median_step_seconds

from weakseg.data.classes import get_class_set
from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.loader import collate, sample_to_tensors
from weakseg.data.transforms import AugmentConfig, JointTransform
from weakseg.engine.device import normalize
from weakseg.pseudo.oversegment import OversegmentConfig, oversegment

SPML = {"annotation_weight": 1.0, "cooccurrence_weight": 0.5, "cooccurrence_concentration": 12.0}
VARIANTS = {
    "pce": ("pce", {}),
    "spml, all pixels": ("spml", {**SPML, "contrast_pixels": None}),
    "spml, 1024 pixels per image": ("spml", {**SPML, "contrast_pixels": 1024}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/voc454"))
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    voc = get_class_set("voc")
    dataset = SegmentationDataset(voc_layout(args.data), "train", kinds=("mask",))
    augment = JointTransform(AugmentConfig(crop_size=256, scale_range=(0.5, 1.5)))
    items = []
    for i in range(8):
        sample = dataset[i]
        scribble = np.full_like(sample.mask, 255)
        scribble[::16] = sample.mask[::16]
        sample = sample.replace(regions=oversegment(sample.image, OversegmentConfig()), scribble=scribble)
        items.append(sample_to_tensors(augment(sample, np.random.default_rng(i)), voc.num_classes))
    batch = collate(items)
    print(f"{torch.get_num_threads()} threads, batch 8, crop 256, median of {args.steps} steps after one warm-up")
    for name, (method_name, method_args) in VARIANTS.items():
        torch.manual_seed(0)
        model, method = build(method_name, method_args, "scribbles", voc)
        seconds = median_step_seconds(model, method, normalize(batch["image"], *model.mean_std), batch, args.steps)
        segments = method.contrast.bank[-1][0].shape[0] if method_name == "spml" else 0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  {name:30s} {seconds:6.2f} s/step  {segments:5d} segments/batch  "
              f"peak RSS so far {peak:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
