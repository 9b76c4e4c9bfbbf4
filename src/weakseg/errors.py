"""User-facing errors: the CLI prints their message on one line and exits non-zero, with no stack trace."""

from __future__ import annotations

from pathlib import Path


class WeakSegError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class ConfigError(WeakSegError):
    """A recipe or override is invalid (unknown key, wrong type, bad value)."""


class DataError(WeakSegError):
    """A data file is missing, unreadable or inconsistent; the message names the file and the problem.

    ``DataError(message)`` (one argument) is accepted too: PyTorch re-raises an error from a data-loader worker
    by calling its class with the worker's whole report.
    """

    def __init__(self, path: str | Path | None, problem: str | None = None) -> None:
        if problem is None:
            path, problem = None, str(path)
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


WORKER_REPORT = "Caught "


def user_message(exc: WeakSegError) -> str:
    """The one line to show a user: a data-loader worker's report is cut down to the original error's line."""
    text = str(exc)
    if text.startswith(WORKER_REPORT):
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if last.startswith(type(exc).__module__) else last
    return text


class TrainingError(WeakSegError):
    """Training cannot go on (non-finite loss, unwritable output folder, corrupt checkpoint)."""
