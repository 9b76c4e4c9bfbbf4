"""The Fit stage: features computed once and cached, a stale or damaged cache never read, the stage's files as a
training stage writes them, bad tags refused in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.probe import fit_stage
from weakseg.engine.recipe import Recipe, load_recipe
from weakseg.errors import DataError
from weakseg.methods import Fit


def _recipe(root: Path, out: Path, *extra: str) -> Recipe:
    return load_recipe("probe-tags", tiny_overrides(root, out, "method_args.scales=[1.0]", *extra))


def _cache_files(out: Path) -> list[Path]:
    return sorted((out / "features").glob("*.pt"))


def test_the_fit_stage_writes_a_checkpoint_the_pipeline_reads(shapes: Path, tmp_path: Path) -> None:
    result = fit_stage(_recipe(shapes, tmp_path), progress=False)
    for name in ("last.pt", "recipe.yaml", "metrics.json"):
        assert (tmp_path / name).is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fit"]["features_cached"] is False and metrics["step"] == metrics["fit"]["iterations"] >= 1
    assert result.images_per_s > 0 and "random" in result.weights_source
    model, recipe, state = load_model_from_checkpoint(tmp_path / "last.pt", torch.device("cpu"))
    assert recipe.method == "probe" and state["recipe"]["method"] == "probe"
    assert torch.equal(model.heads["cam"].classifier.weight, state["model"]["heads.cam.classifier.weight"])
    assert model.heads["cam"].classifier.weight[1:].abs().sum() > 0


def test_cached_features_are_read_and_give_the_same_head(shapes: Path, tmp_path: Path) -> None:
    fit_stage(_recipe(shapes, tmp_path), progress=False)
    first = load_checkpoint(tmp_path / "last.pt")["model"]["heads.cam.classifier.weight"]
    assert len(_cache_files(tmp_path)) == 1
    fit_stage(_recipe(shapes, tmp_path), progress=False)
    assert json.loads((tmp_path / "metrics.json").read_text())["fit"]["features_cached"] is True
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["heads.cam.classifier.weight"], first)


@pytest.mark.parametrize("change", ["image", "views", "damaged"])
def test_a_stale_or_damaged_cache_is_rebuilt_never_read(shapes: Path, tmp_path: Path, change: str) -> None:
    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    out = tmp_path / "run"
    fit_stage(_recipe(root, out), progress=False)
    (cached,) = _cache_files(out)
    extra: tuple[str, ...] = ()
    if change == "image":  # an image replaced in place: same id, other content
        image = next((root / "JPEGImages").glob("shape_0000.*"))  # a training image
        image.write_bytes(image.read_bytes())
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    elif change == "views":
        extra = ("method_args.flip=false",)
    else:
        cached.write_bytes(b"not a checkpoint")
    fit_stage(_recipe(root, out, *extra), progress=False)
    assert json.loads((out / "metrics.json").read_text())["fit"]["features_cached"] is False
    if change == "damaged":
        assert _cache_files(out) == [cached] and torch.load(cached, weights_only=True)["features"].shape[1] == 2
    else:
        assert len(_cache_files(out)) == 2  # the new settings' file beside the old one, which is never read


@pytest.mark.parametrize(
    ("tags", "message"),
    [({"shape_0000": [99]}, "class id 99"), ({}, "has no tags labels")],
)
def test_bad_tags_are_one_line_errors(shapes: Path, tmp_path: Path, tags: dict, message: str) -> None:
    labels = json.loads((shapes / "labels" / "tags.json").read_text())
    (tmp_path / "tags.json").write_text(json.dumps({**{k: v for k, v in labels.items() if k != "shape_0000"}, **tags}))
    with pytest.raises(DataError, match=message):
        fit_stage(_recipe(shapes, tmp_path / "run", f"data.tags={tmp_path / 'tags.json'}"), progress=False)
    skipped = _recipe(shapes, tmp_path / "run", f"data.tags={tmp_path / 'tags.json'}", "data.skip_bad=true")
    assert fit_stage(skipped, progress=False).metrics["step"] >= 1  # the bad image left out


@pytest.mark.slow
def test_the_probe_pipeline_and_spml_on_its_labels(shapes: Path, tmp_path: Path) -> None:
    fast = ("pseudo.scales=[1.0]", "pseudo.flip=false")
    result = Pipeline(_recipe(shapes, tmp_path / "probe", *fast), progress=False).run()
    assert list(result.stage_wall_s) == ["cam", "pseudo", "seg"] and 0 <= result.metrics["miou"] <= 1
    assert result.metrics["pseudo_labels"]["classifier"]["train"]["map"] > 0
    args = ("method_args.cam_method=probe", "method_args.cam_args={scales: [1.0]}",
            "method_args.final_classifier=false", f"method_args.region_cache={tmp_path / 'regions'}")  # fmt: skip
    spml = load_recipe("spml-tags", tiny_overrides(shapes, tmp_path / "spml", *fast, *args))
    pipeline = Pipeline(spml, progress=False)
    assert isinstance(pipeline.stage("cam"), Fit) and pipeline.stage_recipe("cam").method == "probe"
    assert list(pipeline.run().stage_wall_s) == ["cam", "pseudo", "seg"]
