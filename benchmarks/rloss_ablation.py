"""Variants of the `rloss` bench row on one dataset and supervision, trained exactly as the standard profile does.

    python benchmarks/rloss_ablation.py [--dataset voc454] [--supervision scribbles] [--variants NAME ...]

Each variant is the standard-profile `rloss` row's recipe (same data, labels, backbone, schedule, seed) with a few
`method_args` changed; it trains in this process and its val metrics are written to
`benchmarks/results/ablations/<dataset>-rloss-<supervision>.json`, next to the `pce` and `rloss` rows' numbers read
from the standard results. Variants already in that file are not rerun unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from weakseg.bench import DATASETS, Row, git_commit
from weakseg.engine.config import apply_overrides, from_dict, to_dict
from weakseg.engine.recipe import Recipe
from weakseg.engine.trainer import Trainer

VARIANTS = {
    "crf ×4 (1.28e-7), from 50%": ["method_args.crf_weight=1.28e-7"],
    "crf 3.2e-8 from step 0": ["method_args.regularizer_start=0.0"],
    "crf 3.2e-8 + entropy 0.1, from 50%": ["method_args.entropy_weight=0.1"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="voc454", choices=sorted(DATASETS))
    parser.add_argument("--supervision", default="scribbles", choices=("points", "scribbles"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/cache"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()

    row = Row("standard", DATASETS[args.dataset], "rloss", args.supervision, args.data_root, args.results)
    out = args.results / "ablations" / f"{args.dataset}-rloss-{args.supervision}.json"
    table = json.loads(out.read_text()) if out.is_file() else {}
    for method in ("pce", "rloss"):
        row_json = args.results / "standard" / args.dataset / f"{method}-{args.supervision}.json"
        record = json.loads(row_json.read_text())
        name = f"{method} (standard bench row)"
        table[name] = {k: record[k] for k in ("miou", "boundary_f", "jf", "git_commit")} | {"overrides": []}
    for name in args.variants:
        if name in table and not args.force:
            continue
        folder = args.cache / "runs" / "ablations" / args.dataset / f"rloss-{args.supervision}" / str(len(table))
        overrides = [*VARIANTS[name], f"output_dir={folder}"]
        recipe = from_dict(Recipe, apply_overrides(to_dict(row.recipe(args.cache)), overrides)).check()
        start = time.perf_counter()
        metrics = Trainer(recipe, progress=False).fit().metrics
        table[name] = {
            "miou": metrics["miou"],
            "boundary_f": metrics["boundary_f"],
            "jf": metrics["jf"],
            "git_commit": git_commit(),
            "overrides": VARIANTS[name],
            "wall_s": time.perf_counter() - start,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"{args.dataset} {args.supervision}, standard profile (700 steps × batch 8, crop 256, seed 0)")
    for name, r in table.items():
        print(f"  {name:40s} mIoU {r['miou']:.4f}  boundary F {r['boundary_f']:.4f}  J&F {r['jf']:.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
