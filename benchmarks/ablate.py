"""Component ablations of a method's standard-profile bench row: the regularized losses' weights and schedule,
SPML's relations, PMP's modules (paper table 3).

    python benchmarks/ablate.py rloss --supervision scribbles
    python benchmarks/ablate.py spml [--supervision points] [--dataset voc454] [--variants NAME ...] [--force]
    python benchmarks/ablate.py pmp | pmp-pretrained

Each variant is the standard-profile `<method>-<supervision>` bench row's recipe (same data, labels, backbone,
schedule, seed) with a few `method_args` changed; every stage runs in this process and the val metrics go to
`benchmarks/results/ablations/<dataset>-<method>-<supervision>.json`, next to the `pce` and the method's own bench
rows read from the standard results. Variants already there with the same recipe are not rerun unless ``--force``;
a variant interrupted earlier continues from its checkpoints (its `wall_s` then covers this process only, and
`resumed_stages` says so).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from weakseg.bench import (
    DATASETS,
    Row,
    claim_run_folder,
    git_commit,
    method_args_with_defaults,
    variant_fingerprint,
    variant_recorded,
)
from weakseg.config import apply_overrides, from_dict, to_dict
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.recipe import Recipe

VARIANTS: dict[str, dict[str, list[str]]] = {
    "rloss": {
        "crf ×4 (1.28e-7), from 50%": ["method_args.crf_weight=1.28e-7"],
        "crf 3.2e-8 from step 0": ["method_args.regularizer_start=0.0"],
        "crf 3.2e-8 + entropy 0.1, from 50%": ["method_args.entropy_weight=0.1"],
    },
    "spml": {
        "without image similarity": ["method_args.similarity_weight=0"],
        "without semantic annotation": ["method_args.annotation_weight=0"],
        "without co-occurrence": ["method_args.cooccurrence_weight=0"],
        "with feature affinity (λ = annotation's)": ["method_args.affinity_weight=0.1"],
        "without the memory bank": ["method_args.memory=0"],
        "classifier only (no contrast)": [
            "method_args.similarity_weight=0",
            "method_args.annotation_weight=0",
            "method_args.cooccurrence_weight=0",
        ],
        # Not the paper's: the classifier's CE trains the whole model beside the contrast (`pce` + SPML's loss).
        "classifier trained through the embedding": ["method_args.detach_classifier=false"],
    },
    # The paper's table 3 (from scratch): points only, then each module; "points only" thresholds the raw output.
    # The last step, + PAC refiner, is the full method: the `pmp (standard bench row)` entry, not rerun here.
    "pmp": {
        "points only": ["method_args.use_fields=false", "method_args.use_blots=false", "method_args.use_refiner=false"],
        "+ expanding distance fields": ["method_args.use_blots=false", "method_args.use_refiner=false"],
        "+ point blots": ["method_args.use_refiner=false"],
        "PAC refiner + point blots, no fields": ["method_args.use_fields=false"],
    },
}
# The same ladder from the ImageNet backbone: from scratch, even full masks reach only the all-background score under
# the benchmark's schedule (the `full-scratch` row), so the modules' gains can only show where the model learns.
VARIANTS["pmp-pretrained"] = VARIANTS["pmp"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(VARIANTS))
    parser.add_argument("--dataset", default="voc454", choices=sorted(DATASETS))
    parser.add_argument("--supervision", default="points", choices=("points", "scribbles", "tags", "boxes"))
    parser.add_argument("--variants", nargs="+", default=None, help="default: all of the method's")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/cache"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()

    variants = VARIANTS[args.method]
    chosen = args.variants or list(variants)
    unknown = set(chosen) - set(variants)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; {args.method} has {list(variants)}")
    row = Row("standard", DATASETS[args.dataset], args.method, args.supervision, args.data_root, args.results)
    out = args.results / "ablations" / f"{args.dataset}-{args.method}-{args.supervision}.json"
    table = json.loads(out.read_text()) if out.is_file() else {}
    for method in ("pce", args.method):
        row_json = args.results / "standard" / args.dataset / f"{method}-{args.supervision}.json"
        if row_json.is_file():
            record = json.loads(row_json.read_text())
            table[f"{method} (standard bench row)"] = {k: record[k] for k in ("miou", "boundary_f", "jf", "git_commit")}
    for name in chosen:
        index = list(variants).index(name)
        folder = args.cache / "runs" / "ablations" / args.dataset / f"{args.method}-{args.supervision}" / str(index)
        overrides = [*variants[name], f"output_dir={folder}"]
        recipe = from_dict(Recipe, apply_overrides(to_dict(row.recipe(args.cache)), overrides))
        if variant_recorded(table.get(name), recipe) and not args.force:
            continue
        fingerprint, method_args = variant_fingerprint(recipe), method_args_with_defaults(recipe)
        start = time.perf_counter()
        resume = claim_run_folder(folder, fingerprint, method_args) and not args.force
        result = Pipeline(recipe.check(), progress=False).run(resume=resume)
        metrics = result.metrics
        table[name] = {
            "miou": metrics["miou"],
            "boundary_f": metrics["boundary_f"],
            "jf": metrics["jf"],
            "git_commit": git_commit(),
            "overrides": variants[name],
            "recipe": fingerprint,
            "method_args": method_args,
            "wall_s": time.perf_counter() - start,
        }
        if result.resumed_stages:
            table[name]["resumed_stages"] = result.resumed_stages
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"{args.dataset} {args.supervision}, standard profile (700 steps × batch 8, crop 256, seed 0)")
    for name, r in table.items():
        print(f"  {name:45s} mIoU {r['miou']:.4f}  boundary F {r['boundary_f']:.4f}  J&F {r['jf']:.4f}")


if __name__ == "__main__":
    main()
