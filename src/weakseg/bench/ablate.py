"""``weakseg bench ablate TABLE``: a method's component ablation, variants of a standard-profile bench row.

A table (``weakseg/recipes/ablations/<table>.yaml``) names the bench row its variants change, the recipe overrides
of all its variants (optional), and per variant its own overrides (and another row to start from, where it has one).
Every stage of a variant runs in this process, ``until`` a pseudo-label stage (the entry then holds the seed scores on
the train images) or to the end (the val metrics), and the entries go to
``<results>/ablations/<dataset>-<table>-<supervision>.json`` beside copies of the reference bench rows' figures. An
entry made with the recipe, labels and ``until`` a variant would run with now is not rerun unless ``force``; a variant
interrupted earlier continues from its checkpoints (its ``wall_s`` then covers this process only, and
``resumed_stages`` says so). A variant without overrides (its own or the table's) is its bench row itself: it runs in
the row's folder and reuses the stages the row ran.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from weakseg.bench.docs import median_range
from weakseg.bench.labels import ensure_labels
from weakseg.bench.protocol import Protocol
from weakseg.bench.rows import Provenance, Row, record_recipe
from weakseg.bench.runner import claim_run_folder, git_commit
from weakseg.config import RECIPE_DIR, apply_overrides, from_dict, to_dict
from weakseg.engine.recipe import Recipe
from weakseg.errors import ConfigError
from weakseg.methods import PseudoLabel, method_plan

ABLATIONS = RECIPE_DIR / "ablations"
PROFILE = "standard"  # the profile whose bench rows the variants change
SEED_SCORES = {  # an entry's key: the pseudo-label stage's figure
    "seed_miou": ("seed", "miou"),
    "seed_boundary_f": ("seed", "boundary_f"),
    "refined_miou": ("refined", "miou"),
    "refined_boundary_f": ("refined", "boundary_f"),
    "best_threshold_seed_miou": ("seed_thresholds", "best", "miou"),
    "best_threshold": ("seed_thresholds", "best", "threshold"),
    "images": ("images",),
    "classifier_train_map": ("classifier", "train", "map"),
    "classifier_val_map": ("classifier", "val", "map"),
}

SEED_HEADER = (
    "| variant | seeds | seed mIoU | seed F | refined mIoU | best-threshold seed mIoU | best t "
    "| classifier mAP train | classifier mAP val |"
)


@dataclass(frozen=True)
class AblationVariant:
    name: str
    overrides: tuple[str, ...] = ()
    row: str | None = None  # the bench row it changes (default: the table's)
    group: str | None = None  # printed as a table of its own


@dataclass(frozen=True)
class AblationTable:
    name: str
    row: str  # the bench row the variants change
    variants: tuple[AblationVariant, ...]
    supervision: str = "points"  # defaults of the command
    dataset: str = "voc454"
    until: str | None = None
    overrides: tuple[str, ...] = ()  # recipe overrides of every variant, before its own
    per_seed: bool = False  # entries "<variant> / seed <n>", one per seed; else "<variant>" (seed 0)
    references: tuple[str, ...] = ()  # bench rows whose figures the table shows beside the variants
    title: str = "Variants"


def ablation_tables() -> list[str]:
    return sorted(path.stem for path in ABLATIONS.glob("*.yaml"))


def load_table(name: str) -> AblationTable:
    path = ABLATIONS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown ablation {name!r} (ablations: {', '.join(ablation_tables())})")
    data = yaml.safe_load(path.read_text())
    variants = [{"name": key, **(value or {})} for key, value in data.pop("variants").items()]
    return from_dict(AblationTable, {**data, "name": name, "variants": variants}, path.name)


@dataclass(frozen=True)
class VariantRun:
    """One variant on one seed: its entry's key and the recipe it runs."""

    key: str
    variant: AblationVariant
    seed: int
    recipe: Recipe
    provenance: Provenance


def plan_variants(
    protocol: Protocol,
    table: AblationTable,
    *,
    dataset: str,
    supervision: str,
    variants: list[str] | None,
    seeds: list[int],
    data_root: Path,
    results: Path,
    cache: Path,
) -> list[VariantRun]:
    """The runs of ``variants`` (default: all of the table's) × ``seeds``, each from its bench row's recipe."""
    names = [v.name for v in table.variants]
    unknown = [name for name in variants or [] if name not in names]
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; {table.name} has {names}")
    if not table.per_seed and seeds != [0]:
        raise ConfigError(f"the {table.name} ablation is recorded for seed 0 only")
    bench = protocol.dataset(dataset)
    runs = []
    for index, variant in enumerate(table.variants):
        if variants and variant.name not in variants:
            continue
        for seed in seeds:
            row = Row(protocol, PROFILE, bench, variant.row or table.row, supervision, data_root, results, seed)
            folder = cache / "runs" / "ablations" / dataset / f"{table.name}-{supervision}"
            folder /= f"{index}-{seed}" if table.per_seed else str(index)
            overrides = [*table.overrides, *variant.overrides]
            place = [f"output_dir={folder}"] if overrides else []  # no overrides: the row's own folder
            recipe = from_dict(Recipe, apply_overrides(to_dict(row.recipe(cache)), [*overrides, *place]))
            recipe = recipe.check()
            key = f"{variant.name} / seed {seed}" if table.per_seed else variant.name
            provenance = Provenance(record_recipe(recipe), bench.labels_record(), PROFILE)
            runs.append(VariantRun(key, variant, seed, recipe, provenance))
    return runs


def ablate(
    protocol: Protocol,
    table: AblationTable,
    *,
    dataset: str | None = None,
    supervision: str | None = None,
    variants: list[str] | None = None,
    seeds: list[int] | None = None,
    until: str | None = None,
    force: bool = False,
    data_root: Path,
    results: Path,
    cache: Path,
) -> dict:
    """Run the variants not recorded with their current recipe and return the table's entries (written to
    ``<results>/ablations/<dataset>-<table>-<supervision>.json`` after each variant)."""
    dataset, supervision = dataset or table.dataset, supervision or table.supervision
    until = until or table.until
    runs = plan_variants(protocol, table, dataset=dataset, supervision=supervision, variants=variants,
                         seeds=seeds or [0], data_root=data_root, results=results, cache=cache)  # fmt: skip
    out = table_path(results, dataset, table.name, supervision)
    entries = json.loads(out.read_text()) if out.is_file() else {}
    for reference in table.references:
        row_json = results / PROFILE / dataset / f"{reference}-{supervision}.json"
        if row_json.is_file():
            record = json.loads(row_json.read_text())
            entries[f"{reference} (standard bench row)"] = {
                k: record[k] for k in ("miou", "boundary_f", "jf", "git_commit")
            }
    for run in runs:
        stop = stop_stage(run.recipe, until)
        if not force and run.provenance.made(entries.get(run.key)) and entries[run.key].get("until") == stop:
            continue
        if supervision != "full":
            ensure_labels(protocol.dataset(dataset), data_root, supervision, cache)
        entries[run.key] = run_variant(run, stop, table.per_seed, force=force)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def table_path(results: Path, dataset: str, table: str, supervision: str) -> Path:
    return results / "ablations" / f"{dataset}-{table}-{supervision}.json"


def stop_stage(recipe: Recipe, until: str | None) -> str | None:
    """The stage a variant stops after: ``until``, a pseudo-label stage, or None for the last stage."""
    plan = method_plan(recipe.method, recipe.method_args, recipe.supervision)
    names = [stage.name for stage in plan]
    if until is None or until == names[-1]:
        return None
    if until not in names or not isinstance(plan[names.index(until)], PseudoLabel):
        labelling = [stage.name for stage in plan if isinstance(stage, PseudoLabel)]
        raise ConfigError(
            f"--until {until}: an ablation of '{recipe.method}' stops at a pseudo-label stage "
            f"({', '.join(labelling) or 'it has none'}) or runs to its last stage ({names[-1]})"
        )
    return until


def run_variant(run: VariantRun, until: str | None, per_seed: bool, *, force: bool) -> dict:
    """Run one variant (resuming its folder's checkpoints unless ``force``) and return its entry."""
    from weakseg.engine.pipeline import Pipeline

    start = time.perf_counter()
    resume = claim_run_folder(Path(run.recipe.output_dir), run.provenance) and not force
    result = Pipeline(run.recipe, progress=False).run(resume=resume, until=until)
    entry: dict = {"variant": run.variant.name, "seed": run.seed} if per_seed else {}
    if until is None:
        entry.update({k: result.metrics[k] for k in ("miou", "boundary_f", "jf")})
    else:
        for key, path in SEED_SCORES.items():
            value = result.metrics["pseudo_labels"]
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:  # the classifier's mAP needs masks
                entry[key] = value
    entry.update(
        {
            "overrides": list(run.variant.overrides),
            **run.provenance.as_record(),
            "until": until,
            "git_commit": git_commit(),
            "stages_run": sorted(result.stage_wall_s),
            "wall_s": time.perf_counter() - start,
        }
    )
    if result.resumed_stages:
        entry["resumed_stages"] = result.resumed_stages
    return entry


def summary(table: AblationTable, entries: dict, dataset: str, supervision: str) -> str:
    """The table's entries as text: val metrics one line each; seed scores as markdown tables, one per group of
    variants, each cell the median (and range) over seeds."""
    lines = [f"{dataset} {supervision}, {PROFILE} profile"]
    scored: dict[str, list[dict]] = {}  # variant → its entries with seed scores, one per seed
    for key, entry in entries.items():
        if "seed_miou" in entry:
            scored.setdefault(entry.get("variant", key), []).append(entry)
        else:
            lines.append(
                f"  {key:45s} mIoU {entry['miou']:.4f}  boundary F {entry['boundary_f']:.4f}  J&F {entry['jf']:.4f}"
            )
    groups = dict.fromkeys(v.group or table.title for v in table.variants)
    for group in groups if scored else []:
        lines += ["", group, "", SEED_HEADER, "|---" * SEED_HEADER.count(" | ") + "|---|"]
        for variant in (v for v in table.variants if (v.group or table.title) == group):
            runs = scored.get(variant.name, [])
            if runs:
                keys = ("seed_miou", "seed_boundary_f", "refined_miou", "best_threshold_seed_miou", "best_threshold",
                        "classifier_train_map", "classifier_val_map")  # fmt: skip
                cells = [_spread([r[k] for r in runs if k in r]) for k in keys]
                seeds = ", ".join(str(r.get("seed", 0)) for r in runs)
                lines.append(f"| {variant.name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    """The value, the median and range of several, or a dash for none."""
    if not values:
        return "—"
    return f"{values[0]:.3f}" if len(values) == 1 else median_range(values)
