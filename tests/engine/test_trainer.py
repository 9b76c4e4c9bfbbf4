"""Trainer: tiny end-to-end runs, exact resume, NaN guard, atomic checkpoints, schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer, lr_factor
from weakseg.errors import ConfigError, DataError, TrainingError


def _trainer(shapes: Path, out: Path, recipe: str = "full", *extra: str) -> Trainer:
    return Trainer(load_recipe(recipe, tiny_overrides(shapes, out, *extra)), progress=False)


@pytest.mark.parametrize("recipe", ["full", "pce-points", "pce-scribbles"])
def test_tiny_end_to_end(shapes: Path, tmp_path: Path, recipe: str) -> None:
    trainer = _trainer(shapes, tmp_path / recipe, recipe)
    result = trainer.fit()
    assert result.step == 4
    for name in ("last.pt", "best.pt", "metrics.json", "recipe.yaml"):
        assert (tmp_path / recipe / name).is_file()
    assert 0.0 <= result.metrics["miou"] <= 1.0
    assert {"boundary_f", "jf", "per_class_iou", "infer_images_per_s"} <= set(result.metrics)
    losses = [row["loss"] for row in trainer.history if "loss" in row]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


# spml: its memory bank is in the checkpoint; pmp: its expansion scores and epoch loss
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pce-points", "spml-points", "pmp-points"])
def test_resume_continues_exactly(shapes: Path, tmp_path: Path, recipe: str) -> None:
    """train N steps == N/2 steps + resume + N/2 steps: same weights and optimizer state (CPU, deterministic)."""
    extra = ("train.steps=6", "train.ckpt_every=3", "data.num_workers=1", "model.dropout=0.2")
    if recipe == "spml-points":
        extra += (f"method_args.region_cache={tmp_path / 'regions'}",)
    if recipe == "pmp-points":
        extra += (f"method_args.blot_cache={tmp_path / 'blots'}",)
    straight = _trainer(shapes, tmp_path / "straight", recipe, *extra)
    straight.fit()

    first = _trainer(shapes, tmp_path / "split", recipe, *extra)
    first.fit(until=3)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 3
    del first
    second = _trainer(shapes, tmp_path / "split", recipe, *extra)
    assert second.resume()
    assert second.step == 3
    second.fit()

    a, b = straight.model.state_dict(), second.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    losses = lambda t: [r["loss"] for r in t.history if "loss" in r]  # noqa: E731
    assert losses(straight)[3:] == pytest.approx(losses(second)[3:], abs=1e-6)


def test_resume_refuses_a_changed_recipe(shapes: Path, tmp_path: Path) -> None:
    _trainer(shapes, tmp_path, "full").fit(until=2)
    changed = _trainer(shapes, tmp_path, "full", "model.head_channels=8")
    with pytest.raises(TrainingError, match="model changed"):
        changed.resume()


def test_nonfinite_loss_stops_before_any_checkpoint(shapes: Path, tmp_path: Path) -> None:
    trainer = _trainer(shapes, tmp_path, "full", "train.ckpt_every=1", "train.log_every=100")
    original = trainer.method.loss
    calls = {"n": 0}

    def poisoned(outputs, batch):
        calls["n"] += 1
        loss, terms = original(outputs, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), terms

    trainer.method.loss = poisoned
    with pytest.raises(TrainingError, match="non-finite loss"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(DataError, match="last.pt: cannot write: disk full"):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="corrupt"):
        load_checkpoint(path)


def test_unwritable_output_dir_fails_before_training(shapes: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainingError, match="not writable"):
        _trainer(shapes, blocker / "run")


def test_checkpoint_rebuilds_the_model(shapes: Path, tmp_path: Path) -> None:
    trainer = _trainer(shapes, tmp_path, "pce-scribbles")
    trainer.fit()
    model, recipe, _ = load_model_from_checkpoint(tmp_path / "last.pt", torch.device("cpu"))
    assert recipe.method == "pce"
    x = torch.randn(1, 3, 48, 48)
    trainer.model.eval()
    torch.testing.assert_close(model(x)["logits"], trainer.model(x)["logits"])


def test_checkpoint_overrides_reach_the_rebuilt_method(shapes: Path, tmp_path: Path) -> None:
    """``weakseg eval CKPT method_args.classifier_dropout=0.1``: the overrides apply before the method builds the
    model's classifier; an unknown key is refused."""
    _trainer(shapes, tmp_path, "spml-points", "train.steps=1").fit()
    saved, _, _ = load_model_from_checkpoint(tmp_path / "last.pt", torch.device("cpu"))
    changed, recipe, _ = load_model_from_checkpoint(tmp_path / "last.pt", torch.device("cpu"),
                                                    ["method_args.classifier_dropout=0.1"])  # fmt: skip
    assert saved.classifier.net[3].p == 0.65 and changed.classifier.net[3].p == 0.1
    assert recipe.method_args["classifier_dropout"] == 0.1
    with pytest.raises(ConfigError, match="no_such_key"):
        load_model_from_checkpoint(tmp_path / "last.pt", torch.device("cpu"), ["method_args.no_such_key=1"])


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [("poly", 0, 1.0), ("poly", 50, 0.5**0.9), ("cosine", 50, 0.5), ("constant", 99, 1.0), ("poly", 100, 0.0)],
)
def test_lr_schedules(schedule: str, step: int, expected: float) -> None:
    assert lr_factor(step, 100, schedule, 0.9, 0) == pytest.approx(expected)


def test_warmup_is_linear() -> None:
    assert [lr_factor(s, 100, "poly", 0.9, 4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_frozen_norm_keeps_the_running_statistics(shapes: Path, tmp_path: Path) -> None:
    trainer = _trainer(shapes, tmp_path / "frozen", "full", "train.norm=frozen", "train.steps=2", "train.val_every=1")
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    weights = [m.weight.detach().clone() for m in norms]
    trainer.fit()
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
    assert any(not torch.equal(m.weight, w) for m, w in zip(norms, weights, strict=True))  # affine still trains
    plain = _trainer(shapes, tmp_path / "batch", "full", "train.steps=2")
    plain_norms = [m for m in plain.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    plain.fit()
    assert any(not torch.equal(m.running_mean, b) for m, b in zip(plain_norms, before, strict=True))
