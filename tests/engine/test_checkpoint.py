"""Checkpoints: the weights digest catches damage that still loads; the previous checkpoint is kept and used."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.engine.checkpoint import (
    load_checkpoint,
    load_latest_good,
    previous_path,
    save_checkpoint,
    weights_digest,
)
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.errors import TrainingError


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((64, 64), float(step)), "b": torch.arange(3)}}


def _flip_a_weight_byte(path: Path) -> None:
    """Damage the stored tensor bytes (not the archive structure): the file still loads."""
    data = bytearray(path.read_bytes())
    at = data.find(torch.full((4,), 2.0).numpy().tobytes())  # inside the 64×64 block of 2.0s
    assert at > 0
    data[at + 1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_digest_depends_on_every_byte_name_and_shape() -> None:
    base = weights_digest(_state(1)["model"])
    assert weights_digest(_state(1)["model"]) == base
    assert weights_digest(_state(2)["model"]) != base
    assert weights_digest({"w2": torch.full((64, 64), 1.0), "b": torch.arange(3)}) != base
    assert weights_digest({"w": torch.full((32, 128), 1.0), "b": torch.arange(3)}) != base


def test_damaged_weights_that_still_load_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_state(2), path)
    _flip_a_weight_byte(path)
    torch.load(path, weights_only=True)  # the archive itself is intact
    with pytest.raises(TrainingError, match="last.pt: checkpoint is corrupt .*digest"):
        load_checkpoint(path)


def test_the_replaced_checkpoint_is_kept_and_used_when_the_newest_is_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1), path, keep_previous=True)
    assert not previous_path(path).exists()
    save_checkpoint(_state(2), path, keep_previous=True)
    assert load_checkpoint(previous_path(path))["step"] == 1 and load_checkpoint(path)["step"] == 2
    _flip_a_weight_byte(path)
    with caplog.at_level(logging.WARNING):
        state, used = load_latest_good(path)
    assert state["step"] == 1 and used == previous_path(path)
    assert "last.pt: checkpoint is corrupt" in caplog.text and "last.previous.pt (step 1)" in caplog.text
    previous_path(path).write_bytes(b"also broken")
    with pytest.raises(TrainingError, match="last.previous.pt: checkpoint is corrupt"):
        load_latest_good(path)


def test_training_resumes_from_the_previous_checkpoint_when_the_last_is_truncated(shapes: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(shapes, tmp_path, "train.steps=6", "train.ckpt_every=2")
    Trainer(load_recipe("full", overrides), progress=False).fit(until=4)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a crash of the disk, not of the writer (writes are atomic)
    resumed = Trainer(load_recipe("full", overrides), progress=False)
    assert resumed.resume() and resumed.step == 2
    resumed.fit()
    assert load_checkpoint(last)["step"] == 6


def test_a_checkpoint_comes_with_moved_recipe_keys_at_their_new_place(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    old_recipe = {"method": "pmp", "method_args": {"norm": "group_ws"}}  # before `norm` moved to the model section
    save_checkpoint({"model": {"w": torch.ones(2)}, "recipe": old_recipe}, path)
    recipe = load_checkpoint(path)["recipe"]
    assert recipe["model"] == {"norm": "group_ws"} and recipe["method_args"] == {}
