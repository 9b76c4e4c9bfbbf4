"""metrics.csv and TensorBoard event files: written by default, one uninterrupted log across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import tiny_overrides
from weakseg.engine.recipe import load_recipe
from weakseg.engine.run_log import CSV_NAME, TENSORBOARD_DIR, read_metrics_csv
from weakseg.engine.trainer import Trainer


def _run(shapes: Path, out: Path, until: int | None = None, *extra: str) -> Trainer:
    overrides = tiny_overrides(shapes, out, "train.steps=6", "train.ckpt_every=2", "train.val_every=3", *extra)
    trainer = Trainer(load_recipe("pce-points", overrides), progress=False)
    trainer.resume()
    trainer.fit(until=until)
    return trainer


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder / TENSORBOARD_DIR))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_every_logged_row_is_in_the_csv_and_tensorboard(shapes: Path, tmp_path: Path) -> None:
    trainer = _run(shapes, tmp_path)
    rows = read_metrics_csv(tmp_path / CSV_NAME)
    expected = [(r["step"], name, value) for r in trainer.history for name, value in r.items() if name != "step"]
    assert [(r["step"], r["metric"], r["value"]) for r in rows] == expected
    assert {"loss", "lr", "images_per_s", "val_miou", "val_boundary_f"} <= {r["metric"] for r in rows}
    scalars = _scalars(tmp_path)
    assert [step for step, _ in scalars["loss"]] == list(range(1, 7))
    assert [step for step, _ in scalars["val_miou"]] == [3, 6]
    losses = [r["value"] for r in rows if r["metric"] == "loss"]
    assert [v for _, v in scalars["loss"]] == pytest.approx(losses, rel=1e-6)  # event files hold float32


@pytest.mark.slow
def test_a_resumed_run_logs_as_one_run(shapes: Path, tmp_path: Path) -> None:
    straight = _run(shapes, tmp_path / "straight")
    _run(shapes, tmp_path / "split", 5)
    # As if killed after logging step 5 but before its checkpoint: the run resumes at 4 and logs step 5 again.
    split = tmp_path / "split"
    (split / "last.pt").write_bytes((split / "last.previous.pt").read_bytes())
    assert 5 in {r["step"] for r in read_metrics_csv(split / CSV_NAME)}
    _run(shapes, split)
    rows = read_metrics_csv(tmp_path / "split" / CSV_NAME)
    assert [(r["step"], r["metric"]) for r in rows] == [
        (r["step"], name) for r in straight.history for name in r if name != "step"
    ]
    assert [step for step, _ in _scalars(tmp_path / "split")["loss"]] == list(range(1, 7))


def test_tensorboard_can_be_turned_off(shapes: Path, tmp_path: Path) -> None:
    _run(shapes, tmp_path, None, "train.tensorboard=false")
    assert (tmp_path / CSV_NAME).is_file() and not (tmp_path / TENSORBOARD_DIR).exists()
