"""Faults: SIGKILL mid-epoch then resume gives the weights of an uninterrupted run; a full disk is refused up front
and, when it fills during training, the last good checkpoint survives."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.cli import main
from weakseg.engine import trainer as trainer_module
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.errors import DataError, TrainingError

# 8 training images, batch 2: an epoch is 4 steps, so the checkpoint at step 5 is mid-epoch.
KILL_RUN = ("train.steps=24", "train.ckpt_every=5", "data.num_workers=1", "train.num_threads=1", "model.dropout=0.2")


def _train_cli(shapes: Path, out: Path, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "weakseg.cli", "train", "pce-points", *tiny_overrides(shapes, out, *KILL_RUN)]
    return subprocess.Popen([*cmd, "-q", *flags], start_new_session=True, stderr=subprocess.PIPE, text=True)


def _checkpoint_step(path: Path) -> int:
    try:
        return load_checkpoint(path)["step"]
    except TrainingError:  # not written yet
        return 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(shapes: Path, tmp_path: Path) -> None:
    straight = _train_cli(shapes, tmp_path / "straight")
    killed = _train_cli(shapes, tmp_path / "killed")
    deadline = time.monotonic() + 300
    while _checkpoint_step(tmp_path / "killed" / "last.pt") < 5:
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)  # the trainer and its data-loader worker, mid-epoch
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(tmp_path / "killed" / "last.pt")["step"]
    assert 5 <= interrupted_at < 24

    resumed = _train_cli(shapes, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert straight.wait(timeout=600) == 0, straight.stderr.read()
    final, expected = (load_checkpoint(tmp_path / name / "last.pt") for name in ("killed", "straight"))
    assert final["step"] == expected["step"] == 24
    for name, weight in expected["model"].items():
        assert torch.equal(final["model"][name], weight), name
    for name, value in expected["optimizer"]["state"].items():
        assert torch.equal(final["optimizer"]["state"][name]["momentum_buffer"], value["momentum_buffer"])


def test_a_disk_too_full_for_the_checkpoints_stops_before_training(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(trainer_module.shutil, "disk_usage", lambda _: SimpleNamespace(free=2**20))
    assert main(["train", "full", *tiny_overrides(shapes, tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "run: only 1 MB free on its disk; the run's checkpoints need about" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "last.pt").exists()


def test_a_disk_that_fills_during_training_keeps_the_last_good_checkpoint(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(load_recipe("full", tiny_overrides(shapes, tmp_path, "train.ckpt_every=2")), progress=False)
    real_save = torch.save
    saves = {"n": 0}

    def save_until_full(obj, f):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(DataError, match="last.pt: cannot write: No space left on device"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
