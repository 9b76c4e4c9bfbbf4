"""Best-threshold seed mIoU for bench rows recorded before the pseudo-label stage scored every threshold.

    python -m benchmarks.seed_thresholds [--dataset voc454] [--rows cam-tags hfpl-tags-seed1 ...] [--force]
                                         [--data-root ../shared/data] [--cache benchmarks/cache]
                                         [--out benchmarks/results] [--docs docs]

SEAM and PPC report CAM seeds at the best of a range of background thresholds; the pseudo-label stage now scores
the seeds at each of ``weakseg.pseudo.cam.SEED_THRESHOLDS`` as well (``pseudo_labels.seed_thresholds``). For each
multi-stage row of the standard profile (under ``--out``, the bench's results) that lacks those scores on the
current grid, this takes them from the row's own pseudo-label stage when that scored them, and otherwise reruns the
seed part of the row's pseudo-label pass on its cached CAM checkpoint (same recipe and CAM inference; refinement
skipped, no label files written), checks that it reproduces the recorded seed mIoU, and adds ``seed_thresholds`` to
the row's JSON and to its run folder's ``pseudo/metrics.json``. The row stays current: its recipe and checkpoint
are unchanged. ``docs/benchmarks.md`` is regenerated at the end. About 10 minutes per row on one CPU core
(multi-scale + flip CAMs of the 212 train images).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from benchmarks.common import add_out, entry_point
from weakseg.bench.docs import write_benchmark_docs
from weakseg.bench.protocol import STANDARD
from weakseg.bench.rows import Row
from weakseg.bench.runner import git_commit, update_ratios
from weakseg.data.formats import write_json
from weakseg.engine.checkpoint import LAST, load_model_from_checkpoint
from weakseg.engine.pipeline import Pipeline, pseudo_label_dataset
from weakseg.engine.pseudo_labels import make_pseudo_labels
from weakseg.methods import PseudoLabel
from weakseg.pseudo.cam import SEED_THRESHOLDS

TOLERANCE = 1e-3  # recorded vs recomputed seed mIoU; CPU inference is deterministic up to thread-order rounding


def main(argv: list[str] | None = None) -> None:
    parser = entry_point("seed_thresholds", __doc__)
    parser.add_argument("--dataset", default="voc454", choices=[d.name for d in STANDARD.datasets])
    parser.add_argument("--rows", nargs="+", default=None, help="row names (default: every multi-stage row)")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/cache"), help="the bench's run folders")
    add_out(parser, Path("benchmarks/results"), "the bench rows, completed (and read from)")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where docs/benchmarks.md is regenerated")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    folder = args.out / "standard" / args.dataset
    paths = [folder / f"{name}.json" for name in args.rows] if args.rows else sorted(folder.glob("*.json"))
    for path in paths:
        record = json.loads(path.read_text())
        recorded = record.get("pseudo_labels")
        if recorded is None or (_on_current_grid(recorded) and not args.force):
            continue
        row = Row(STANDARD, "standard", STANDARD.dataset(args.dataset), record["method"], record["supervision"],
                  args.data_root, args.out, record.get("seed", 0))  # fmt: skip
        if not row.is_current(args.cache):
            print(f"{row.name}: recorded with another recipe than the current one; run `weakseg bench` first")
            continue
        pipeline = Pipeline(row.recipe(args.cache), progress=False)
        pseudo = next(stage.name for stage in pipeline.plan if isinstance(stage, PseudoLabel))
        stage_metrics = pipeline.stage_dir(pseudo) / "metrics.json"
        stage = json.loads(stage_metrics.read_text()) if stage_metrics.is_file() else {}
        if _on_current_grid(stage) and stage["seed"]["miou"] == recorded["seed"]["miou"] and not args.force:
            sweep, drift = stage["seed_thresholds"], 0.0  # the row's own pseudo-label stage scored them
        else:
            checkpoint = pipeline.stage_dir(pipeline.names[0]) / LAST
            if not checkpoint.is_file():
                print(f"{row.name}: no cached CAM checkpoint at {checkpoint}; rerun the row")
                continue
            scores = _seed_scores(pipeline, checkpoint)
            drift = abs(scores["seed"]["miou"] - recorded["seed"]["miou"])
            if drift > TOLERANCE:
                print(f"{row.name}: recomputed seeds differ from the recorded ones by {drift:.4f} mIoU; not written")
                continue
            sweep = {**scores["seed_thresholds"], "measured": {"by": "benchmarks.seed_thresholds", "git_commit":
                     git_commit(), "recorded_seed_drift": drift}}  # fmt: skip
            if stage:
                write_json(stage_metrics, {**stage, "seed_thresholds": sweep})
        record["pseudo_labels"]["seed_thresholds"] = sweep
        write_json(path, record)
        best = sweep["best"]
        print(
            f"{row.name}: seed {recorded['seed']['miou']:.3f} at the pseudo-labels' threshold, {best['miou']:.3f} "
            f"at t = {best['threshold']:.2f} (recorded seed reproduced within {drift:.1e})"
        )
    update_ratios(args.out, "standard")
    write_benchmark_docs(args.out, args.docs, STANDARD)


def _on_current_grid(metrics: dict) -> bool:
    """Whether pseudo-label metrics hold seed scores at every one of today's ``SEED_THRESHOLDS``."""
    return metrics.get("seed_thresholds", {}).get("thresholds") == list(SEED_THRESHOLDS)


def _seed_scores(pipeline: Pipeline, checkpoint: Path) -> dict:
    """The row's pseudo-label scores from its CAM checkpoint, seeds only (refinement skipped, nothing written)."""
    model = load_model_from_checkpoint(checkpoint, torch.device("cpu"))[0]
    recipe = pipeline.recipe
    dataset = pseudo_label_dataset(recipe, recipe.data.train_split)
    seeds_only = dataclasses.replace(recipe.pseudo, refine="none", crf=False)
    return make_pseudo_labels(model, dataset, recipe.supervision, seeds_only, torch.device("cpu"), progress=False)


if __name__ == "__main__":
    main()
