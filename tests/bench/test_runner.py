"""The runner: one row end to end on tiny data, resume, run-folder claiming, child processes, ratios."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weakseg.bench.protocol import STANDARD, Protocol
from weakseg.bench.rows import Row
from weakseg.bench.runner import (
    ROW_MARKER,
    bench,
    claim_run_folder,
    describe_stage,
    pseudo_summary,
    run_child_process,
    run_row,
    update_ratios,
)
from weakseg.config import from_dict, to_dict
from weakseg.data.formats import write_json
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.trainer import Trainer
from weakseg.pseudo.cam import PseudoLabelConfig

REQUIRED = {
    "miou", "per_class_iou", "boundary_f", "jf", "ratio_to_full", "train_images_per_s", "infer_images_per_s",
    "peak_rss_mb", "wall_s", "device", "labels_protocol", "labelled_pixel_fraction", "seed", "git_commit", "command",
    "recipe", "labels", "profile",
}  # fmt: skip


@pytest.mark.slow
def test_one_row_end_to_end(tiny_row: Row, tmp_path: Path) -> None:
    row = tiny_row
    record = run_row(row, tmp_path / "cache", "abc123")
    assert set(record) >= REQUIRED
    assert record["git_commit"] == "abc123" and record["seed"] == 0
    assert 0 < record["labelled_pixel_fraction"] < 0.5
    assert record["labels_protocol"].startswith("scribbles: 50% of each component's skeleton")
    assert row.provenance(tmp_path / "cache").made(record) and str(tmp_path) not in json.dumps(record)
    assert set(record["per_class_iou"]) == {"background", "disc", "square", "triangle", "ring"}
    assert (tmp_path / "cache" / "labels" / "shapes").is_dir()


@pytest.mark.slow
def test_an_interrupted_row_resumes_where_it_stopped(
    tiny_row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = run_row(tiny_row, tmp_path / "whole", "abc123")
    assert "resumed_stages" not in uninterrupted
    cache = tmp_path / "cache"
    save = Trainer.save

    def save_then_stop(trainer: Trainer, name: str) -> None:
        save(trainer, name)
        if trainer.step == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_row(tiny_row, cache, "abc123", resume=True)
    resumed = run_row(tiny_row, cache, "abc123", resume=True)
    assert resumed["resumed_stages"] == ["train"]
    assert resumed["miou"] == uninterrupted["miou"]  # the same weights: resuming is exact on CPU
    assert resumed["train_images_per_s"] > 0 and "random" in resumed["backbone"]


@pytest.mark.slow
def test_a_row_does_not_resume_checkpoints_of_another_recipe(tiny_row: Row, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run_row(tiny_row, cache, "abc123")
    marker = Path(tiny_row.recipe(cache).output_dir) / ROW_MARKER
    trained_under = tiny_row.provenance(cache).as_record()
    assert json.loads(marker.read_text()) == trained_under
    other = json.loads(json.dumps(trained_under))
    other["recipe"]["train"]["lr"] = 0.5
    write_json(marker, other)
    assert "resumed_stages" not in run_row(tiny_row, cache, "abc123", resume=True)
    other["recipe"]["train"]["lr"] = trained_under["recipe"]["train"]["lr"]
    other["recipe"]["method_args"]["magic"] = 1  # arguments today's code does not have
    write_json(marker, other)
    assert "resumed_stages" not in run_row(tiny_row, cache, "abc123", resume=True)
    finished = run_row(tiny_row, cache, "abc123", resume=True)  # nothing left to train: recorded figures reused
    assert finished["resumed_stages"] == ["train"] and finished["train_images_per_s"] > 0


def test_a_marker_claims_a_run_folder_for_the_provenance_its_checkpoints_had(tiny_row: Row, tmp_path: Path) -> None:
    provenance = tiny_row.provenance(tmp_path)
    assert not claim_run_folder(tmp_path, provenance)  # a new folder: nothing to continue
    assert claim_run_folder(tmp_path, provenance)
    quick_labels = Row(**{**vars(tiny_row), "profile": "standard"}).provenance(tmp_path)
    assert not claim_run_folder(tmp_path, quick_labels)  # another provenance takes the folder over
    assert not claim_run_folder(tmp_path, provenance)
    assert claim_run_folder(tmp_path, provenance)


def test_the_protocol_travels_to_the_row_process(tiny: Protocol) -> None:
    assert from_dict(Protocol, json.loads(json.dumps(to_dict(tiny)))).dataset("shapes") == tiny.dataset("shapes")


@pytest.mark.slow
def test_bench_runs_missing_rows_in_child_processes_then_skips_them(
    tiny: Protocol, shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    places = {"data_root": shapes.parent, "results": tmp_path / "results", "cache": tmp_path / "cache",
              "docs": tmp_path / "docs"}  # fmt: skip
    done = bench(tiny, "quick", ["shapes"], ["full"], None, **places)
    assert done == [tmp_path / "results" / "quick" / "shapes" / "full-full.json"]
    record = json.loads(done[0].read_text())
    assert record["ratio_to_full"] == 1.0 and record["train_steps"] == 4
    assert record["command"] == "weakseg bench --profile quick --datasets shapes --methods full --supervisions full"
    assert "| full | full |" in (tmp_path / "docs" / "benchmarks.md").read_text()
    capsys.readouterr()
    assert bench(tiny, "quick", ["shapes"], ["full"], None, **places) == []
    assert "shapes full-full: up to date" in capsys.readouterr().out


def test_update_ratios_uses_the_full_row(tmp_path: Path) -> None:
    folder = tmp_path / "standard" / "voc454"
    write_json(folder / "full-full.json", {"miou": 0.5, "ratio_to_full": None})
    write_json(folder / "pce-points.json", {"miou": 0.4, "ratio_to_full": None})
    update_ratios(tmp_path, "standard")
    assert json.loads((folder / "pce-points.json").read_text())["ratio_to_full"] == pytest.approx(0.8)
    assert json.loads((folder / "full-full.json").read_text())["ratio_to_full"] == pytest.approx(1.0)


def test_pseudo_summary_keeps_the_seed_scores_at_every_threshold() -> None:
    scores = {"miou": 0.2, "boundary_f": 0.1, "jf": 0.15, "per_class_iou": [0.2]}
    sweep = {"thresholds": [0.0, 0.5], "miou": [0.3, 0.2], "best": {"threshold": 0.0, "miou": 0.3}}
    metrics = {**dict.fromkeys(("baseline", "seed", "refined"), scores), "pseudo": {"miou": 0.25}, "coverage": 0.8,
               "images": 4, "seed_thresholds": sweep}  # fmt: skip
    summary = pseudo_summary(metrics, PseudoLabelConfig())
    assert summary["seed_thresholds"] == sweep and summary["seed"] == {"miou": 0.2, "boundary_f": 0.1}
    assert summary["pseudo"] == {"miou": 0.25, "coverage": 0.8} and summary["images"] == 4
    assert "classifier" not in summary
    classifier = {
        split: {"map": value, "per_class_ap": {"cat": value}} for split, value in (("train", 0.9), ("val", 0.6))
    }
    summary = pseudo_summary({**metrics, "classifier": classifier}, PseudoLabelConfig())
    assert summary["classifier"] == {"train": {"map": 0.9}, "val": {"map": 0.6}}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_fitted_stage_is_described_by_what_it_was_fitted_on(tmp_path: Path) -> None:
    voc = STANDARD.dataset("voc454")
    rows = (Row(STANDARD, "standard", voc, method, "tags", tmp_path, tmp_path) for method in ("cam", "probe"))
    cam, probe = (Pipeline(row.recipe(tmp_path), progress=False) for row in rows)
    assert describe_stage(cam, "cam") == "cam: 300 steps × batch 8, crop 256, scale [0.4, 0.7]"
    fitted = "probe: head fitted on frozen features, neck pretrained, scales [1.0, 0.5], flip True"
    assert describe_stage(probe, "cam").startswith(fitted)


def test_a_terminated_bench_stops_its_row_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent_code = (
        "from weakseg.bench.runner import run_child_process; "
        f"run_child_process([{sys.executable!r}, '-c', {sleeper!r}])"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # reaped by the parent, not left running
        os.kill(child_pid, 0)


@pytest.mark.slow
def test_run_child_process_returns_the_exit_code() -> None:
    assert run_child_process([sys.executable, "-c", "raise SystemExit(3)"]) == 3
