"""Dense CRF loss speed next to the model's own training step, and its scaling with image size.

    python benchmarks/rloss_speed.py [--data ../shared/data/voc454] [--repeats 5] [--json OUT]

In one run, on VOC photos: the median seconds of (a) a lite0 DeepLab-v3+ training step (forward + backward + SGD)
on 8×320² with the segmentation head, and (b) the dense CRF loss forward + backward on the same batch's 21-class
softmax, at scale 0.5 (filtered at 160²) and at full resolution, for each kernel; then the ratio (b)/(a). Then the
permutohedral loss alone at 80², 160², 320² and 640², each size in its own process, with its peak memory: the
high-water mark of resident memory while the loss ran, minus the memory before it (Linux). Set the thread count
with OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from profile_step import timed  # benchmarks/ is on sys.path when this runs as a script

from weakseg.engine.device import normalize
from weakseg.losses import DenseCRFLoss, PartialCrossEntropy
from weakseg.models import ModelConfig, build_model


def photos(data: Path, batch: int, size: int) -> torch.Tensor:
    files = sorted((data / "JPEGImages").glob("*.jpg"))[:batch]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def loss_step(loss: DenseCRFLoss, logits: torch.Tensor, image: torch.Tensor) -> float:
    """Seconds of one forward + backward of ``loss`` on ``softmax(logits)``."""
    leaf = logits.clone().requires_grad_(True)
    start = time.perf_counter()
    loss(torch.softmax(leaf, 1), image).backward()
    return time.perf_counter() - start


def model_vs_loss(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    image = photos(args.data, args.batch, args.size)
    model = build_model(ModelConfig(), 21).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    normalized = normalize(image, *model.mean_std)
    target = torch.randint(0, 21, (args.batch, args.size, args.size))
    criterion = PartialCrossEntropy()

    def step() -> None:
        loss = criterion(model(normalized)["logits"], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = statistics.median(timed(step, args.repeats))
    with torch.no_grad():
        logits = model(normalized)["logits"]  # stride 4: the loss resizes the softmax to the filtering scale
    rows = [{"name": f"model step {args.batch}×{args.size}² (lite0 DeepLab-v3+)", "seconds": step_s, "ratio": 1.0}]
    for kernel, scale in [("permutohedral", 0.5), ("permutohedral", 1.0), ("local", 0.5), ("local", 1.0)]:
        loss = DenseCRFLoss(kernel=kernel, scale_factor=scale)
        seconds = statistics.median(timed(lambda loss=loss: loss_step(loss, logits, image), args.repeats))
        name = f"CRF loss fwd+bwd, {kernel}" + (" 11×11 window" if kernel == "local" else "") + f", scale {scale}"
        rows.append({"name": name, "seconds": seconds, "ratio": seconds / step_s})
    return rows


def scaling_row(args: argparse.Namespace) -> dict:
    """Time and peak memory of the permutohedral CRF loss at full resolution on ``args.size``² photos."""
    image = photos(args.data, args.batch, args.size)
    logits = torch.randn(args.batch, 21, args.size // 4, args.size // 4)
    loss = DenseCRFLoss(scale_factor=1.0, sigma_xy=100 * args.size / 320)
    loss_step(loss, logits, image)  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux)
    before = _status_mb("VmRSS")
    seconds = statistics.median(loss_step(loss, logits, image) for _ in range(args.repeats))
    peak = _status_mb("VmHWM") - before
    return {"size": args.size, "pixels": args.batch * args.size**2, "seconds": seconds, "peak_mb": peak}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/voc454"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--scaling-row", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scaling_row:
        print(json.dumps(scaling_row(args)))
        return
    rows = model_vs_loss(args)
    for r in rows:
        print(f"{r['name']:52s} {r['seconds'] * 1000:8.1f} ms   {r['ratio']:.3f}× the model step")
    scaling = []
    print("\npermutohedral CRF loss, full resolution, σ_xy scaled with the image (fwd+bwd, batch 8, 21 classes):")
    for size in (80, 160, 320, 640):
        cmd = [sys.executable, __file__, "--scaling-row", "--data", str(args.data), "--size", str(size),
               "--batch", str(args.batch), "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        scaling.append(json.loads(out))
        r, first = scaling[-1], scaling[0]
        print(
            f"  {size:4d}²  {r['seconds'] * 1000:8.1f} ms  ({r['seconds'] / first['seconds']:5.1f}× the 80² time for "
            f"{r['pixels'] / first['pixels']:4.0f}× the pixels)  peak memory +{r['peak_mb']:.0f} MB"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.json:
        args.json.write_text(json.dumps({"step_vs_loss": rows, "scaling": scaling}, indent=2) + "\n")


if __name__ == "__main__":
    main()
