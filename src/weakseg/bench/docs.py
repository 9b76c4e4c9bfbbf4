"""``docs/benchmarks.md``, generated from the rows' JSON: tables, commands, hardware and a plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from weakseg.bench.protocol import Protocol
from weakseg.bench.rows import Row
from weakseg.errors import ConfigError
from weakseg.methods.base import SUPERVISIONS

PLOT_NAME = "benchmarks-miou-vs-labels.png"
COLUMNS = (
    ("method", "method", "{}"),
    ("supervision", "supervision", "{}"),
    ("seed", "seed", "{}"),
    ("labelled_pixel_fraction", "labelled pixels", "{:.4%}"),
    ("miou", "mIoU", "{:.3f}"),
    ("ratio_to_full", "ratio to full", "{:.2f}"),
    ("boundary_f", "boundary F", "{:.3f}"),
    ("jf", "J&F", "{:.3f}"),
    ("pseudo_labels.seed.miou", "seed mIoU (train)", "{:.3f}"),
    ("pseudo_labels.refined.miou", "refined seed", "{:.3f}"),
    ("pseudo_labels.seed_thresholds.best.miou", "best-threshold seed", "{:.3f}"),
    ("pseudo_labels.seed_thresholds.best.threshold", "at t", "{:.2f}"),
    ("pseudo_labels.pseudo.miou", "kept-label mIoU", "{:.3f}"),
    ("pseudo_labels.pseudo.coverage", "coverage", "{:.0%}"),
    ("pseudo_labels.classifier.train.map", "classifier mAP train", "{:.3f}"),
    ("pseudo_labels.classifier.val.map", "classifier mAP val", "{:.3f}"),
    ("train_images_per_s", "train img/s", "{:.1f}"),
    ("infer_images_per_s", "infer img/s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("wall_s", "wall min", "{:.1f}"),
    ("recipe_status", "recipe", "{}"),
)
CURRENT, OLDER = "today's", "older †"


def _order(record: dict, row_order: tuple[str, ...]) -> tuple[int, int, int]:
    method = row_order.index(record["method"]) if record["method"] in row_order else len(row_order)
    return method, SUPERVISIONS.index(record["supervision"]), record["seed"]


def _value(record: dict, key: str) -> object:
    """``record[key]``, following dots into nested records (None where absent)."""
    value: object = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(record: dict, key: str, fmt: str) -> str:
    value = _value(record, key)
    if value is None:
        return "—"
    if key == "wall_s":  # a resumed row's wall time covers the last process only
        return fmt.format(value / 60) + (" (resumed)" if record.get("resumed_stages") else "")
    return fmt.format(value)


def made_with_todays_recipe(record: dict, protocol: Protocol) -> bool:
    """Whether the row's command would train it now with the recipe, labels and profile it was made with (rows made
    before a default changed are not)."""
    try:
        dataset = protocol.dataset(record["dataset"])
        row = Row(protocol, record["profile"], dataset, record["method"], record["supervision"], Path("data"),
                  Path("results"), record["seed"])  # fmt: skip
        return row.provenance(Path("cache")).made(record)
    except (ConfigError, KeyError):
        return False


def load_records(results: Path, protocol: Protocol) -> dict[str, dict[str, list[dict]]]:
    """``{profile: {dataset: [records in the protocol's row order]}}``, each with its ``recipe_status``."""
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(results.glob("*/*/*.json")):
        record = json.loads(path.read_text())
        record.setdefault("seed", 0)  # rows from before seeds were recorded were trained with seed 0
        record["recipe_status"] = CURRENT if made_with_todays_recipe(record, protocol) else OLDER
        out.setdefault(record["profile"], {}).setdefault(record["dataset"], []).append(record)
    for datasets in out.values():
        for records in datasets.values():
            records.sort(key=lambda record: _order(record, protocol.row_order))
    return out


def markdown_table(records: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in records:
        lines.append("| " + " | ".join(_cell(r, key, fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


SEED_COLUMNS = (
    ("pseudo_labels.classifier.train.map", "classifier mAP (train)"),
    ("pseudo_labels.classifier.val.map", "classifier mAP (val)"),
    ("pseudo_labels.seed.miou", "seed mIoU"),
    ("pseudo_labels.seed.boundary_f", "seed F"),
    ("pseudo_labels.seed_thresholds.best.miou", "best-threshold seed mIoU"),
    ("pseudo_labels.refined.miou", "refined seed mIoU"),
    ("pseudo_labels.refined.boundary_f", "refined seed F"),
    ("miou", "val mIoU"),
    ("boundary_f", "val boundary F"),
)


# Also as median (min–max): reproductions of CAM-based methods vary by several points between seeds.
SPREAD_COLUMNS = (
    ("pseudo_labels.seed.miou", "seed mIoU median (range)"),
    ("pseudo_labels.seed_thresholds.best.miou", "best-threshold seed median (range)"),
    ("miou", "val mIoU median (range)"),
)


def seed_table(records: list[dict]) -> str | None:
    """Mean ± standard deviation, then median (min–max), over seeds, for rows trained with more than one seed;
    None if there are none."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:  # seeds made with an older recipe are not pooled with today's
        groups.setdefault((r["method"], r["supervision"], r.get("recipe_status", CURRENT)), []).append(r)
    groups = {key: rows for key, rows in groups.items() if len(rows) > 1}
    if not groups:
        return None
    titles = [t for _, t in (*SEED_COLUMNS, *SPREAD_COLUMNS)]
    lines = ["| method | supervision | seeds | " + " | ".join(titles) + " | recipe |", "|" + "---|" * (len(titles) + 4)]
    for (method, supervision, status), rows in groups.items():
        cells = []
        for columns, summary in ((SEED_COLUMNS, _mean_sd), (SPREAD_COLUMNS, median_range)):
            for key, _ in columns:
                values = [v for v in (_value(r, key) for r in rows) if v is not None]
                cells.append(summary(values) if len(values) > 1 else "—")
        seeds = ", ".join(str(r["seed"]) for r in rows)
        lines.append(f"| {method} | {supervision} | {seeds} | " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines)


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def median_range(values: list[float]) -> str:
    """``median (min–max)`` to 3 decimals."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def plot_miou_vs_labels(records: list[dict], path: Path) -> None:
    """mIoU against labelled-pixel fraction (log scale), one marker series per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if r.get("labelled_pixel_fraction") and not r.get("seed")]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for dataset in sorted({r["dataset"] for r in records}):
        rows = [r for r in records if r["dataset"] == dataset]
        ax.scatter([r["labelled_pixel_fraction"] for r in rows], [r["miou"] for r in rows], label=dataset, s=40)
        for r in rows:
            ax.annotate(
                f"{r['method']}/{r['supervision']}",
                (r["labelled_pixel_fraction"], r["miou"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.set_xlabel("labelled pixel fraction (log)")
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_benchmark_docs(results: Path, docs: Path, protocol: Protocol) -> Path:
    """Regenerate ``docs/benchmarks.md`` (and its plot) from every JSON row under ``results``."""
    profiles = load_records(results, protocol)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `weakseg bench` from the JSON rows in `benchmarks/results/`; do not edit by hand.",
        "Every row of a profile uses the same backbone, head, crop and schedule; weak labels are simulated from the",
        "training masks with `derive-labels` (seed 0) and each row names its protocol. `full` is the upper bound,",
        "trained and measured the same way, and `ratio to full` is a row's mIoU over it. voc454 (PASCAL VOC 2012:",
        "train on its 212 train images, evaluate on its 242 val images) is not comparable with published full-val",
        "numbers. `full-scratch` is the upper bound of training from scratch: full masks on the model `pmp` starts",
        "from (random weights, group norm + weight standardisation), same schedule.",
        "Multi-stage rows also score their CAM seeds on the train images: `seed mIoU (train)` at the",
        "background threshold the pseudo-labels use (the recipe's: for tags 0.20, 0.30 for `probe`; 0.5 inside",
        "boxes), `refined seed` after the recipe's refinement (PAMR, then the dense CRF where the recipe sets it),",
        "`best-threshold seed` at the best of the thresholds 0.00, 0.01, …, 0.95 (`at t`), the figure SEAM and PPC",
        "report, the training labels' mIoU over the pixels they keep (`kept-label mIoU`, ignore left out) and the",
        "share they keep (`coverage`), and the CAM classifier's multi-label mAP on the train and val images.",
        "`box-fill` and `box-prior` have no CAM: their seed is the box prior itself (each box filled with its class;",
        "GrabCut inside each box).",
        "`box-fill` is the baseline of every boxes row, as `pce` is of points and scribbles.",
        f"A row whose `recipe` is `{OLDER}` was made with a recipe other than the one its command trains today (it",
        "predates a change of a default, e.g. the CAM stage's learning rates and background threshold): its figures",
        "are those of the recipe in its JSON, until its command is run again.",
        "",
    ]
    for profile in sorted(profiles, key=lambda p: list(protocol.profiles).index(p) if p in protocol.profiles else 99):
        datasets = profiles[profile]
        all_rows = [r for records in datasets.values() for r in records]
        first = all_rows[0]
        lines += [
            f"## Profile `{profile}`",
            "",
            f"- backbone: {first['backbone']}",
            f"- head: {first['head']}",
            f"- schedule: {first['schedule']}",
            f"- hardware: {first['hardware']} (device `{first['device']}`)",
            f"- reproduce: `weakseg bench --profile {profile} --datasets {' '.join(sorted(datasets))} "
            f"--methods {' '.join(sorted({r['method'] for r in all_rows}, key=protocol.row_order.index))}`",
            "",
        ]
        for dataset, records in sorted(datasets.items()):
            lines += [f"### {dataset}", "", markdown_table(records), ""]
            seeds = seed_table(records)
            if seeds:
                lines += ["Over seeds (mean ± standard deviation; median and range):", "", seeds, ""]
            lines += ["Label protocols and provenance:", ""]
            for r in records:
                described = [f"stage {k}: {v}" for k, v in r.get("stages", {}).items() if k != "wall_s"]
                stages = "".join(f"; {d}" for d in described)
                seed = f" seed {r['seed']}" if r["seed"] else ""
                lines.append(
                    f"- `{r['method']}-{r['supervision']}`{seed}: {r['labels_protocol']}{stages}; "
                    f"eval {r['eval']}; "
                    f"commit `{r['git_commit']}`; `{r['command']}`"
                )
            lines.append("")
        plot = docs / f"{profile}-{PLOT_NAME}"
        plot_miou_vs_labels(all_rows, plot)
        lines += [f"![mIoU vs labelled pixels, {profile} profile]({plot.name})", ""]
    out = docs / "benchmarks.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
