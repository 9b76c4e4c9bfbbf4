"""Every entry point of benchmarks/ imports and parses its options (``--help``), so that a broken import fails."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import label_counts, label_scores, median_seconds

ENTRY_POINTS = sorted(
    path.stem
    for path in (Path(__file__).parents[1] / "benchmarks").glob("*.py")
    if path.stem not in ("__init__", "common")
)
SPEED = ("step", "cam", "spml", "rloss", "boxes", "scaling")


@pytest.mark.parametrize(("name", "argv"), [*((n, []) for n in ENTRY_POINTS), *(("speed", [w]) for w in SPEED)])
def test_each_entry_point_answers_help(name: str, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"benchmarks.{name}").main([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m benchmarks.{' '.join([name, *argv])}" in text
    assert "--data-root" in text or argv  # a subcommand's help leaves the common options to its tool's


def test_the_entry_points_are_the_indexed_ones() -> None:
    index = (Path(__file__).parents[1] / "benchmarks" / "README.md").read_text()
    assert ENTRY_POINTS == [
        "bilateral_accuracy", "box_labels", "cam_refinement", "cam_statistics", "export_parity", "oversegmentation",
        "pmp_blots", "pmp_pseudo", "rloss_weight", "seed_thresholds", "speed", "spml_embedding",
    ]  # fmt: skip
    for name in ENTRY_POINTS:
        assert f"python -m benchmarks.{name}" in index


def test_the_timer_takes_the_median_after_a_warm_up_with_the_calls_in_turn() -> None:
    order: list[str] = []
    medians = median_seconds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] * 4 and set(medians) == {"a", "b"} and all(s >= 0 for s in medians.values())


def test_label_scores_pool_the_counts_of_partial_labels() -> None:
    mask = np.array([[0, 0, 1, 1]])
    labels = np.array([[0, 255, 1, 0]])  # background right, one unlabelled, object right, object missed
    coverage, precision, object_precision, object_recall, background_share = label_scores(
        label_counts(labels, mask, background=0, ignore=255)
    )
    assert (coverage, precision, object_precision, object_recall) == (0.75, 2 / 3, 1.0, 0.5)
    assert background_share == 2 / 3
