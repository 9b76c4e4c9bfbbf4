"""User-facing errors: the CLI prints their message on one line and exits non-zero, with no stack trace."""

from __future__ import annotations

from pathlib import Path


class WeakSegError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class ConfigError(WeakSegError):
    """A recipe or override is invalid (unknown key, wrong type, bad value)."""


class DataError(WeakSegError):
    """A data file is missing, unreadable or inconsistent; the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class TrainingError(WeakSegError):
    """Training cannot go on (non-finite loss, unwritable output folder, corrupt checkpoint)."""
