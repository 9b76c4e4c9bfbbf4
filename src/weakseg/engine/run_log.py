"""A training run's metric log: ``metrics.csv`` (one row per step and metric) and TensorBoard event files.

Rows are written at the trainer's logging steps (``train.log_every``) and validations, by rank 0 only. A resumed run
first drops what was logged after the step it resumes from, so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from weakseg.data.formats import atomic_write

CSV_NAME = "metrics.csv"
CSV_FIELDS = ("step", "metric", "value")
TENSORBOARD_DIR = "tensorboard"


def read_metrics_csv(path: Path) -> list[dict]:
    """Rows of a ``metrics.csv``: ``{"step": int, "metric": str, "value": float}``."""
    with open(path, newline="") as f:
        return [{"step": int(r["step"]), "metric": r["metric"], "value": float(r["value"])} for r in csv.DictReader(f)]


class RunLog:
    """Appends ``{step, name: value, …}`` rows to ``metrics.csv`` and, with ``tensorboard``, to event files."""

    def __init__(self, folder: Path, start_step: int, *, tensorboard: bool = True) -> None:
        self.path = folder / CSV_NAME
        kept = [r for r in read_metrics_csv(self.path) if r["step"] <= start_step] if self.path.is_file() else []
        atomic_write(self.path, lambda f: f.write(_csv_text(kept).encode()))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events after the resumed step, left by the interrupted run, are discarded
            purge = start_step + 1 if start_step else None
            self.writer = SummaryWriter(str(folder / TENSORBOARD_DIR), purge_step=purge)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        values = {k: float(v) for k, v in row.items() if k != "step"}
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows((step, name, repr(value)) for name, value in values.items())
        if self.writer is not None:
            for name, value in values.items():
                if math.isfinite(value):
                    self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _csv_text(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_FIELDS)
    writer.writerows((r["step"], r["metric"], repr(r["value"])) for r in rows)
    return text.getvalue()
