"""docs/benchmarks.md is generated from the JSON rows: tables in the protocol's row order, provenance, the plot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from weakseg.bench.docs import write_benchmark_docs
from weakseg.bench.protocol import STANDARD
from weakseg.bench.rows import Row
from weakseg.data.formats import write_json


def _record(dataset: str, method: str, supervision: str, miou: float, fraction: float) -> dict:
    return {
        "dataset": dataset, "profile": "standard", "method": method, "supervision": supervision, "miou": miou,
        "ratio_to_full": None, "boundary_f": 0.3, "jf": (miou + 0.3) / 2, "train_images_per_s": 9.0,
        "infer_images_per_s": 17.0, "peak_rss_mb": 2500.0, "wall_s": 600.0, "labelled_pixel_fraction": fraction,
        "backbone": "lite0", "head": "v3+", "schedule": "700 steps", "hardware": "2 cores", "device": "cpu",
        "labels_protocol": f"{supervision} protocol", "eval": "val", "git_commit": "abc", "command": "weakseg bench",
    }  # fmt: skip


def test_docs_tables_and_plot(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    rows = [
        _record("voc454", "pce", "scribbles", 0.30, 0.02),
        _record("voc454", "full", "full", 0.40, 0.95),
        {**_record("voc454", "pce", "points", 0.20, 0.0001), "resumed_stages": ["train"]},
        _record("camvid", "full", "full", 0.50, 0.9),
    ]
    for r in rows:
        write_json(results / "standard" / r["dataset"] / f"{r['method']}-{r['supervision']}.json", r)
    text = write_benchmark_docs(results, docs, STANDARD).read_text()
    voc = text[text.index("### voc454") :]
    assert voc.index("| full | full |") < voc.index("| pce | points |") < voc.index("| pce | scribbles |")
    assert "| pce | points | 0 | 0.0100% | 0.200 |" in voc
    assert "| 2500 | 10.0 (resumed) |" in voc and "| 2500 | 10.0 |" in voc  # a resumed row's wall time is partial
    assert "### camvid" in text and "`pce-points`: points protocol" in text
    assert "weakseg bench --profile standard --datasets camvid voc454 --methods full pce" in text
    assert (docs / "standard-benchmarks-miou-vs-labels.png").stat().st_size > 1000


def test_rows_over_seeds_get_mean_and_spread(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    for seed, miou in [(0, 0.20), (1, 0.30), (2, 0.25)]:
        record = {**_record("voc454", "cam", "tags", miou, 0.1), "seed": seed, "command": f"bench seed {seed}"}
        best = {"miou": miou + 0.2, "threshold": 0.1}
        record["pseudo_labels"] = {"seed": {"miou": miou + 0.1, "boundary_f": 0.2}, "seed_thresholds": {"best": best}}
        write_json(results / "standard" / "voc454" / f"cam-tags{f'-seed{seed}' if seed else ''}.json", record)
    text = write_benchmark_docs(results, docs, STANDARD).read_text()
    assert "| cam | tags | 2 | 10.0000% | 0.250 |" in text  # one table row per seed, in seed order
    assert "| 0.350 | — | 0.450 | 0.10 |" in text  # seed 2's seed, refined seed, best-threshold seed and its t
    # mean ± sd of each score, then median (min–max) of seed mIoU, best-threshold seed mIoU and val mIoU
    assert (
        "| cam | tags | 0, 1, 2 | — | — | 0.350 ± 0.050 | 0.200 ± 0.000 | 0.450 ± 0.050 | — | — | 0.250 ± 0.050 "
        "| 0.300 ± 0.000 | 0.350 (0.300–0.400) | 0.450 (0.400–0.500) | 0.250 (0.200–0.300) | older † |" in text
    )
    assert "`cam-tags` seed 2: tags protocol" in text and "`cam-tags`: tags protocol" in text


def test_rows_made_with_another_recipe_are_marked_and_not_pooled(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    row = Row(STANDARD, "standard", STANDARD.dataset("voc454"), "pce", "points", Path("data"), results)
    for seed in (0, 1, 2):  # seeds 0 and 1 made with today's recipe, seed 2 with a recipe of other steps
        provenance = dataclasses.replace(row, seed=seed).provenance(tmp_path).as_record()
        provenance["recipe"]["train"]["steps"] += seed == 2
        record = {**_record("voc454", "pce", "points", 0.2 + seed / 10, 0.01), "seed": seed, **provenance}
        write_json(results / "standard" / "voc454" / f"pce-points{f'-seed{seed}' if seed else ''}.json", record)
    text = write_benchmark_docs(results, docs, STANDARD).read_text()
    assert "| 10.0 | today's |" in text and "| 10.0 | older † |" in text
    assert "| pce | points | 0, 1 |" in text and "| pce | points | 0, 1, 2 |" not in text


def test_the_recorded_rows_give_the_committed_page(tmp_path: Path) -> None:
    committed = Path(__file__).parents[2] / "docs" / "benchmarks.md"
    results = Path(__file__).parents[2] / "benchmarks" / "results"
    assert write_benchmark_docs(results, tmp_path, STANDARD).read_text() == committed.read_text()
