"""Training throughput on 1 and N processes (torchrun + DistributedDataParallel), and peak memory.

    python benchmarks/scaling.py [--dataset voc454] [--processes 1 2] [--steps 30] [--device cpu|cuda]
                                 [--data-root ../shared/data] [--out benchmarks/results/scaling]

Each configuration is one ``torchrun --standalone --nproc_per_node N weakseg train`` of the benchmark's standard
recipe (``full`` on the dataset: lite0 + DeepLab-v3+, 256² crops, global batch 8) for ``--steps`` steps, run one
after the other on this machine. On the CPU the machine's cores are shared evenly (``train.num_threads`` = cores / N,
one data-loader worker per process). Reports the trainer's images/s (wall time between steps, data loading
included, start-up excluded), its speed-up over one process, the peak resident memory of the largest process and,
on CUDA, the peak GPU memory of rank 0; writes ``<out>/<device>-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from weakseg.bench.protocol import STANDARD
from weakseg.bench.rows import Row
from weakseg.config import to_dict
from weakseg.data.formats import write_json


def standard_overrides(dataset: str, data_root: Path, cache: Path, steps: int, device: str, processes: int) -> list:
    """The standard profile's ``full`` row recipe, cut to ``steps`` steps with no checkpoint or validation inside."""
    row = Row(STANDARD, "standard", STANDARD.dataset(dataset), "full", "full", data_root, cache)
    recipe = to_dict(row.recipe(cache))
    threads = max(1, (os.cpu_count() or 1) // processes)
    return [
        f"data.root={recipe['data']['root']}",
        f"data.classes={recipe['data']['classes']}",
        f"data.train_split={recipe['data']['train_split']}",
        "data.val_split=''",  # no validation: training throughput only
        "data.num_workers=1",
        f"augment.crop_size={recipe['augment']['crop_size']}",
        f"augment.scale_range={recipe['augment']['scale_range']}",
        f"train.batch_size={recipe['train']['batch_size']}",
        f"train.lr={recipe['train']['lr']}",
        f"train.backbone_lr_mult={recipe['train']['backbone_lr_mult']}",
        f"train.steps={steps}",
        f"train.ckpt_every={steps}",
        f"train.log_every={steps}",
        f"train.device={device}",
        *([f"train.num_threads={threads}"] if device == "cpu" else []),
    ]


# Runs a command and prints the peak resident memory (KiB) of its largest descendant process.
PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run(processes: int, overrides: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "weakseg.cli", "train", "full", *overrides, f"output_dir={out}", "-q"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], check=True, stdout=subprocess.PIPE, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "processes": processes,
        "train_images_per_s": metrics["train_images_per_s"],
        "peak_rss_mb": int(done.stdout.split()[-1]) / 1024,
        "peak_gpu_memory_mb": metrics.get("peak_gpu_memory_mb"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="voc454", choices=[d.name for d in STANDARD.datasets])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            overrides = standard_overrides(args.dataset, args.data_root, Path(tmp), args.steps, args.device, n)
            rows.append(run(n, overrides, Path(tmp) / f"n{n}"))
            base = rows[0]["train_images_per_s"]
            row = rows[-1]
            row["speedup"] = row["train_images_per_s"] / base
            print(f"{n} process(es): {row['train_images_per_s']:.2f} images/s ({row['speedup']:.2f}×)", flush=True)
    record = {
        "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]),
        "dataset": args.dataset,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "steps": args.steps,
        "recipe": "full, standard profile (lite0 + DeepLab-v3+, 256² crops, global batch 8)",
        "rows": rows,
    }
    write_json(args.out / f"{args.device}-{args.dataset}.json", record)


if __name__ == "__main__":
    main()
