"""PPC's component ablation (the paper's table 5) on voc454 tags: seed mIoU on the train images.

    python benchmarks/ppc_ablation.py [--variants NAME ...] [--seeds 0 1 2] [--force]

Each variant is the standard-profile `ppc-tags` bench row's recipe (same data, labels, backbone, CAM-stage schedule,
pseudo-label settings) with some of PPC's terms switched off, or the `seam-tags` row's for the base. Only the `cam`
and `pseudo` stages run (`Pipeline.run(until="pseudo")`): the figures are the CAM seeds on the 212 train images, as
in the paper's table, at the pseudo-labels' background threshold and at the best of 0.00…0.95 (the paper's protocol,
"a range of thresholds"). The base and full-PPC variants resume in the `seam-tags` / `ppc-tags` bench rows' folders
and reuse the stages those rows ran (``stages_run`` lists what this script ran itself). Results go to
`benchmarks/results/ablations/voc454-ppc-tags.json`; a variant and seed already there with the same recipe is not
rerun unless ``--force``. ``BASE_PROBES`` are variants of the base alone, each changing one thing, to find what keeps
our `seam` below the plain CAM learner; they print as a second table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from weakseg.bench import (
    DATASETS,
    Row,
    git_commit,
    method_args_with_defaults,
    variant_fingerprint,
    variant_recorded,
)
from weakseg.config import apply_overrides, from_dict, to_dict
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.recipe import Recipe
from weakseg.report import median_range

# name → (bench row method, overrides of its recipe); each row adds one component to the one above.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "seam (base)": ("seam", []),
    "+ cross prototype": ("ppc", ["method_args.cross_cam=false", "method_args.intra=false"]),
    "+ cross CAM": ("ppc", ["method_args.intra=false"]),
    "+ intra view": ("ppc", ["method_args.mining=null", "method_args.sampling=false"]),
    "+ prototype mining": ("ppc", ["method_args.sampling=false"]),
    "+ pixel sampling (ppc)": ("ppc", []),
}
# What limits the seam base (docs/ppc.md, "Figures"): one change at a time to the seam-tags row's recipe.
BASE_PROBES: dict[str, tuple[str, list[str]]] = {
    "seam without ER (two-view classification only)": ("seam", ["method_args.er_weight=0"]),
    "seam, second view 192²": ("seam", ["method_args.view_size=192"]),
    "ppc on seam, second view 192²": ("ppc", ["method_args.view_size=192"]),
}
ALL_VARIANTS = {**VARIANTS, **BASE_PROBES}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=list(ALL_VARIANTS), choices=list(ALL_VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/cache"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()

    out = args.results / "ablations" / "voc454-ppc-tags.json"
    table = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.variants:
        method, overrides = ALL_VARIANTS[name]
        for seed in args.seeds:
            row = Row("standard", DATASETS["voc454"], method, "tags", args.data_root, args.results, seed)
            # A variant without overrides is the bench row itself: it resumes in the row's folder, so the CAM and
            # pseudo-label stages the row already ran are reused rather than trained again.
            index = list(ALL_VARIANTS).index(name)
            folder = args.cache / "runs" / "ablations" / "voc454" / "ppc-tags" / f"{index}-{seed}"
            place = [f"output_dir={folder}"] if overrides else []
            recipe_dict = apply_overrides(to_dict(row.recipe(args.cache)), [*overrides, *place])
            recipe = from_dict(Recipe, recipe_dict).check()
            key = f"{name} / seed {seed}"
            if variant_recorded(table.get(key), recipe) and not args.force:
                continue
            fingerprint, method_args = variant_fingerprint(recipe), method_args_with_defaults(recipe)
            start = time.perf_counter()
            result = Pipeline(recipe, progress=False).run(resume=True, until="pseudo")
            seeds = result.metrics["pseudo_labels"]
            table[key] = {
                "variant": name,
                "seed": seed,
                "seed_miou": seeds["seed"]["miou"],
                "seed_boundary_f": seeds["seed"]["boundary_f"],
                "refined_miou": seeds["refined"]["miou"],
                "refined_boundary_f": seeds["refined"]["boundary_f"],
                "best_threshold_seed_miou": seeds["seed_thresholds"]["best"]["miou"],
                "best_threshold": seeds["seed_thresholds"]["best"]["threshold"],
                "images": seeds["images"],
                "overrides": overrides,
                "recipe": fingerprint,
                "method_args": method_args,
                "git_commit": git_commit(),
                "stages_run": sorted(result.stage_wall_s),
                "wall_s": time.perf_counter() - start,
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(table, indent=2) + "\n")
    print("voc454 tags, CAM seeds on train (standard profile: cam stage 300 steps × batch 8, crop 256)")
    for title, variants in (("The paper's table 5", VARIANTS), ("Probes of the seam base", BASE_PROBES)):
        _print_table(title, table, variants)


def _print_table(title: str, table: dict, variants: dict) -> None:
    print(f"\n{title}\n")
    print("| variant | seeds | seed mIoU (t = 0.15) | seed F | PAMR-refined mIoU | best-threshold seed mIoU | best t |")
    print("|---|---|---|---|---|---|---|")
    for name in variants:
        runs = [r for r in table.values() if r["variant"] == name]
        if runs:
            keys = ("seed_miou", "seed_boundary_f", "refined_miou", "best_threshold_seed_miou", "best_threshold")
            cells = [_spread([r[k] for r in runs if k in r]) for k in keys]
            print(f"| {name} | {', '.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + " |")


def _spread(values: list[float]) -> str:
    """Median, and the range when there is more than one value."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return median_range(values)


if __name__ == "__main__":
    main()
