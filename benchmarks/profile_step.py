"""Where does a CPU training step spend its time? Data, backbone, decoder, loss — and what the speed options buy.

    python benchmarks/profile_step.py [--data ../shared/data/voc454] [--steps 8] [--batch 8] [--crop 256]

Prints, for each variant, the median seconds per step of the forward+backward+SGD step and the images/s, all
measured in this one run (so ratios between rows are meaningful), plus the data-loading cost per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.loader import AugmentedDataset, collate
from weakseg.data.transforms import AugmentConfig, JointTransform
from weakseg.engine.device import normalize
from weakseg.losses import PartialCrossEntropy
from weakseg.models import ModelConfig, build_model


def timed(fn, steps: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/voc454")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)

    dataset = SegmentationDataset(voc_layout(Path(args.data)), "train", kinds=("mask",), required=("mask",))
    aug = AugmentedDataset(dataset, JointTransform(AugmentConfig(crop_size=args.crop)), 21, seed=0)
    data_times = timed(lambda: collate([aug[i] for i in range(args.batch)]), 3)
    batch = collate([aug[i] for i in range(args.batch)])
    print(f"data: {statistics.median(data_times):.3f} s per batch of {args.batch} (decode + augment, 1 process)")

    criterion = PartialCrossEntropy()
    variants = {
        "v3+ os16": ModelConfig(channels_last=False),
        "v3+ os16 channels_last": ModelConfig(channels_last=True),
        "v3 os16 channels_last": ModelConfig(head="deeplabv3", channels_last=True),
        "v3+ os16 cl, 96 ch": ModelConfig(channels_last=True, head_channels=96),
        "v3+ os8 channels_last": ModelConfig(output_stride=8, channels_last=True),
        "v3+ os16 cl, compiled": ModelConfig(channels_last=True),
    }
    rows = []
    for name, cfg in variants.items():
        model = build_model(cfg, 21).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        forward = torch.compile(model) if "compiled" in name else model
        mean, std = model.mean_std
        images = normalize(batch["image"], mean, std)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)

        def step(forward=forward, opt=opt, images=images) -> None:
            loss = criterion(forward(images)["logits"], batch["mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def backbone_only(model=model, images=images) -> None:
            feats = model.backbone(images)
            sum(f.mean() for f in feats).backward()

        t_step = statistics.median(timed(step, args.steps))
        t_backbone = statistics.median(timed(backbone_only, max(2, args.steps // 2)))
        rows.append((name, t_step, t_backbone))
        print(f"{name:24s} step {t_step:.3f} s  ({args.batch / t_step:5.1f} img/s)  backbone fwd+bwd {t_backbone:.3f} s")
    base = rows[0][1]
    print("\nratios to the first row (same run):")
    for name, t, _ in rows:
        print(f"  {name:24s} {t / base:.2f}x time")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")


if __name__ == "__main__":
    main()
