"""Dense CRF post-processing in ``weakseg eval``, ``weakseg predict`` and training validation (shapes fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_overrides
from weakseg.cli import main
from weakseg.data.synthetic import SHAPES_CLASSES
from weakseg.engine import evaluator
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.errors import ConfigError
from weakseg.pseudo import DenseCRF


def _fit(shapes: Path, out: Path, *extra: str) -> Path:
    Trainer(load_recipe("full", tiny_overrides(shapes, out, *extra)), progress=False).fit()
    return out / "last.pt"


@pytest.fixture(scope="module")
def checkpoint(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(shapes, tmp_path_factory.mktemp("crf") / "full")


@pytest.fixture
def crf_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every DenseCRF the evaluator builds, by its keyword arguments."""
    calls: list[dict] = []

    def spy(**kwargs: int) -> DenseCRF:
        calls.append(kwargs)
        return DenseCRF(**kwargs)

    monkeypatch.setattr(evaluator, "DenseCRF", spy)
    return calls


@pytest.mark.slow
def test_eval_with_crf_returns_metrics(checkpoint: Path, tmp_path: Path, crf_calls: list[dict]) -> None:
    out = tmp_path / "m.json"
    assert main(["eval", str(checkpoint), "eval.crf=true", "eval.crf_iterations=3", "--out", str(out), "-q"]) == 0
    metrics = json.loads(out.read_text())
    for key in ("miou", "boundary_f", "jf", "pixel_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_images"] == 3
    assert crf_calls == [{"iterations": 3}] * 3


def test_predict_with_crf_writes_label_maps(
    checkpoint: Path, shapes: Path, tmp_path: Path, crf_calls: list[dict]
) -> None:
    images = sorted((shapes / "JPEGImages").iterdir())[:2]
    out = tmp_path / "pred"
    argv = ["predict", str(checkpoint), *map(str, images), "--out", str(out), "--set", "eval.crf=true", "-q"]
    assert main(argv) == 0
    for path in images:
        with Image.open(out / f"{path.stem}.png") as label:
            assert label.mode == "P" and label.size == (64, 64)
            assert np.asarray(label).max() < SHAPES_CLASSES.num_classes
        assert (out / f"{path.stem}_overlay.jpg").is_file()
    assert crf_calls == [{"iterations": 10}] * 2


@pytest.mark.slow
def test_training_validation_uses_crf_only_when_set(shapes: Path, tmp_path: Path, crf_calls: list[dict]) -> None:
    _fit(shapes, tmp_path / "plain")
    assert crf_calls == []
    _fit(shapes, tmp_path / "crf", "eval.crf=true", "eval.crf_iterations=2")
    assert crf_calls == [{"iterations": 2}] * 3


def test_negative_crf_iterations_is_a_config_error(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.crf_iterations"):
        load_recipe("full", tiny_overrides(shapes, tmp_path, "eval.crf_iterations=-1"))
