"""Where does a CPU training step spend its time, and what do the speed options buy?

    python benchmarks/profile_step.py [--data ../shared/data/voc454] [--steps 8] [--batch 8] [--crop 256]

Each variant runs in its own process (so its peak memory is its own), one after the other in this one run, so
the ratios between rows are meaningful. Prints the data-loading cost per batch, then per variant the median
seconds of a forward+backward+SGD step, images/s, the backbone's share, and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.loader import AugmentedDataset, collate
from weakseg.data.transforms import AugmentConfig, JointTransform
from weakseg.engine.device import normalize
from weakseg.losses import PartialCrossEntropy
from weakseg.models import ModelConfig, build_model

VARIANTS = {
    "before: v3+ os16 NCHW": {"channels_last": False},
    "after: v3+ os16 channels_last (default)": {},
    "v3+ os16 cl + torch.compile": {"compile": True},
    "v3 os16 cl (no stride-4 skip)": {"head": "deeplabv3"},
    "v3+ os16 cl, 96 channels": {"head_channels": 96},
    "v3+ os8 cl": {"output_stride": 8},
}


def timed(fn, steps: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def load_batch(data: str, batch: int, crop: int) -> tuple[dict, float]:
    dataset = SegmentationDataset(voc_layout(Path(data)), "train", kinds=("mask",), required=("mask",))
    aug = AugmentedDataset(dataset, JointTransform(AugmentConfig(crop_size=crop)), 21, seed=0)
    seconds = statistics.median(timed(lambda: collate([aug[i] for i in range(batch)]), 3))
    return collate([aug[i] for i in range(batch)]), seconds


def run_variant(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    options = dict(VARIANTS[name])
    compiled = options.pop("compile", False)
    batch, _ = load_batch(args.data, args.batch, args.crop)
    model = build_model(ModelConfig(**options), 21).train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = normalize(batch["image"], *model.mean_std)
    criterion = PartialCrossEntropy()

    def step() -> None:
        loss = criterion(forward(images)["logits"], batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def backbone_only() -> None:
        x = images.contiguous(memory_format=torch.channels_last) if model.channels_last else images
        sum(f.mean() for f in model.backbone(x)).backward()

    step_s = statistics.median(timed(step, args.steps))
    backbone_s = statistics.median(timed(backbone_only, max(2, args.steps // 2)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"name": name, "step_s": step_s, "backbone_s": backbone_s, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/voc454")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    _, data_s = load_batch(args.data, args.batch, args.crop)
    print(f"data: {data_s:.3f} s per batch of {args.batch} at {args.crop}² (decode + augment, one process)")
    rows = []
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name, "--data", args.data, "--steps", str(args.steps),
               "--batch", str(args.batch), "--crop", str(args.crop)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        r = rows[-1]
        print(
            f"{name:42s} step {r['step_s']:.3f} s  {args.batch / r['step_s']:5.1f} img/s  "
            f"backbone {r['backbone_s'] / r['step_s']:4.0%} of step  peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    base = rows[0]["step_s"]
    print("\nstep time relative to the first row (same run): " + ", ".join(
        f"{r['name'].split(':')[0]} {r['step_s'] / base:.2f}x" for r in rows))  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
