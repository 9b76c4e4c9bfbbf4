"""Shared by the benchmark scripts: the ``--data-root`` / ``--out`` flags, one timer, and partial-label scores."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

DATA_ROOT = Path("../shared/data")  # as `weakseg bench --data-root`
SCORES = ("coverage", "precision", "object precision", "object recall", "background share")


def entry_point(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks.<name>``: its module docstring as the description, and ``--data-root``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-root", type=Path, default=DATA_ROOT, help="folder holding voc454/ and camvid/ (default: %(default)s)"
    )
    return parser


def add_out(parser: argparse.ArgumentParser, default: Path | None, written: str) -> None:
    """``--out``: where the script writes ``written``."""
    shown = f" (default: {default})" if default else " (default: print only)"
    parser.add_argument("--out", type=Path, default=default, help=f"write {written} here{shown}")


def rerooted(root: str, data_root: Path) -> str:
    """A recipe's ``data.root`` under ``data_root``: the same dataset folder where this machine keeps it."""
    return str(data_root / Path(root).name)


def median_seconds(calls: Mapping[str, Callable[[], object]], steps: int) -> dict[str, float]:
    """The median wall-clock seconds of each call over ``steps`` rounds after one warm-up round, all in this process.
    The calls take their turns round by round, so that a machine shared with other jobs slows them alike and the
    ratios between them hold."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(steps + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def label_counts(labels: np.ndarray, mask: np.ndarray, background: int | None, ignore: int) -> np.ndarray:
    """Pixel counts of a label map (``ignore`` = unlabelled) against a mask, to pool over images: all, labelled,
    labelled and scored, correct; labelled with an object class and scored, correct; object pixels, found with their
    class; labelled background. Without a background class (CamVid) every class counts as an object."""
    labelled = labels != ignore
    scored = labelled & (mask != ignore)
    labels_bg = labels == background if background is not None else np.zeros(labels.shape, bool)
    mask_bg = mask == background if background is not None else np.zeros(mask.shape, bool)
    claims = scored & ~labels_bg
    objects = (mask != ignore) & ~mask_bg
    return np.array([
        labels.size, labelled.sum(), scored.sum(), (labels[scored] == mask[scored]).sum(), claims.sum(),
        (labels[claims] == mask[claims]).sum(), objects.sum(), (objects & (labels == mask)).sum(),
        (labelled & labels_bg).sum(),
    ], dtype=np.float64)  # fmt: skip


def label_scores(counts: np.ndarray) -> tuple[float, ...]:
    """The :data:`SCORES` of pooled :func:`label_counts`."""
    pixels, labelled, scored, correct, claimed, right, objects, found, background = counts
    return (
        labelled / pixels,
        correct / max(scored, 1),
        right / max(claimed, 1),
        found / max(objects, 1),
        background / max(labelled, 1),
    )
