"""What SPML's loss costs next to the training step, on real voc454 crops.

    python benchmarks/spml_speed.py [--steps 4] [--data ../shared/data/voc454] [--baseline REV]

Builds one batch of 8 augmented 256² training crops with their Felzenszwalb regions and a scribble-like label
(every 16th row of the mask), then times forward + loss + backward + SGD for `pce` and for `spml` (scribble
weights) with the contrast over all pixels and over 1024 per image. The variants take their steps in turn (one
warm-up step each, then ``--steps`` rounds), so that a machine shared with other jobs slows them alike. ``--baseline
REV`` adds each `spml` variant again with the loss module (`weakseg/losses/spml.py`) of git revision REV, e.g.
``HEAD`` before committing a change to it. Prints the median seconds per step, the ratio to `pce`, the segments per
batch and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from steptime import build, step_seconds

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
LOSS_MODULE = "src/weakseg/losses/spml.py"


def loss_module_at(revision: str) -> ModuleType:
    """The SPML loss module as it was at git ``revision``, imported under another name."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{revision}:{LOSS_MODULE}"], cwd=root, capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "spml_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("spml_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/voc454"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--baseline", help="git revision whose SPML loss is timed too")
    args = parser.parse_args()
    voc = get_class_set("voc")
    dataset = SegmentationDataset(voc_layout(args.data), "train", kinds=("mask",))
    augment = JointTransform(AugmentConfig(crop_size=256, scale_range=(0.5, 1.5)))
    items = []
    for i in range(8):
        sample = dataset[i]
        scribble = np.full_like(sample.maps["mask"], 255)
        scribble[::16] = sample.maps["mask"][::16]
        sample = sample.with_maps(regions=oversegment(sample.image, OversegmentConfig()), scribble=scribble)
        items.append(sample_to_tensors(augment(sample, np.random.default_rng(i)), voc.num_classes))
    batch = collate(items)
    baseline = loss_module_at(args.baseline) if args.baseline else None
    runs = {}
    for name, (method_name, method_args) in VARIANTS.items():
        for old in (False, True) if baseline and method_name == "spml" else (False,):
            torch.manual_seed(0)
            model, method = build(method_name, method_args, "scribbles", voc)
            if old:
                new = method.contrast
                relations = {k: baseline.Relation(r.weight, r.concentration) for k, r in new.relations.items()}
                method.contrast = baseline.PixelSegmentContrastLoss(
                    **relations, grid=new.grid, iterations=new.iterations, memory=new.bank.maxlen,
                    pixels_per_image=new.pixels_per_image,
                )  # fmt: skip
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            runs[f"{name} ({args.baseline})" if old else name] = (model, method, optimizer, [])
    images = normalize(batch["image"], *runs["pce"][0].mean_std)
    for _ in range(args.steps + 1):
        for model, method, optimizer, times in runs.values():
            times.append(step_seconds(model, method, optimizer, images, batch))
    print(f"{torch.get_num_threads()} threads, batch 8, crop 256, median of {args.steps} steps after one warm-up")
    reference = statistics.median(runs["pce"][3][1:])
    for name, (_, method, _, times) in runs.items():
        seconds = statistics.median(times[1:])
        segments = method.contrast.bank[-1][0].shape[0] if hasattr(method, "contrast") else 0
        print(f"  {name:40s} {seconds:6.2f} s/step  {seconds / reference:4.1f} × pce  {segments:5d} segments/batch")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
