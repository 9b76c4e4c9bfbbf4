"""Multi-stage pipelines: CAM → pseudo-labels → segmentation from one recipe, resume and restart at any stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from weakseg.data.sample import LABEL_KINDS
from weakseg.data.simulate import mix_labels
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.pipeline import Pipeline, final_checkpoint
from weakseg.engine.recipe import load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.errors import ConfigError, TrainingError

PSEUDO_FAST = ("pseudo.scales=[1.0]", "pseudo.flip=false")


def _pipeline(shapes: Path, out: Path, recipe: str = "cam-tags", *extra: str) -> Pipeline:
    return Pipeline(load_recipe(recipe, tiny_overrides(shapes, out, *PSEUDO_FAST, *extra)), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cam-tags", "hfpl-boxes"])
def test_cam_pipeline_end_to_end(shapes: Path, tmp_path: Path, recipe: str) -> None:
    out = tmp_path / recipe
    result = _pipeline(shapes, out, recipe, "stages.cam.train.steps=3").run()
    assert list(result.stage_wall_s) == ["cam", "pseudo", "seg"]
    assert load_checkpoint(out / "cam" / "last.pt")["step"] == 3
    assert load_checkpoint(out / "seg" / "last.pt")["step"] == 4
    assert len(list((out / "pseudo" / "labels").glob("*.png"))) == 8
    seeds = json.loads((out / "pseudo" / "metrics.json").read_text())
    assert {"baseline", "seed", "refined", "pseudo", "coverage"} <= set(seeds)
    assert 0 < seeds["coverage"] <= 1
    assert set(seeds["classifier"]) == {"train", "val"}  # the CAM learner's mAP on its own images and on val
    assert all(0 <= scores["map"] <= 1 and len(scores["per_class_ap"]) == 4 for scores in seeds["classifier"].values())
    # The seeds at every background threshold: the pseudo-labels' own threshold gives the seed score exactly.
    sweep = seeds["seed_thresholds"]
    at = sweep["thresholds"].index(0.15 if recipe == "cam-tags" else 0.5)
    assert sweep["miou"][at] == pytest.approx(seeds["seed"]["miou"], abs=1e-12)
    assert sweep["best"]["miou"] == max(sweep["miou"]) and len(sweep["miou"]) == len(sweep["thresholds"]) == 96
    final = json.loads((out / "metrics.json").read_text())
    assert 0 <= final["miou"] <= 1 and final["pseudo_labels"]["seed"]["miou"] == seeds["seed"]["miou"]
    assert result.final_checkpoint == out / "seg" / "last.pt"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["seam-boxes", "ppc-tags", "ppc-hfpl-tags"])
def test_two_view_learners_run_the_pipeline(shapes: Path, tmp_path: Path, recipe: str) -> None:
    out = tmp_path / recipe
    result = _pipeline(shapes, out, recipe, "stages.cam.train.steps=2", "method_args.view_size=32").run()
    assert list(result.stage_wall_s) == ["cam", "pseudo", "seg"]
    state = load_checkpoint(out / "cam" / "last.pt")
    assert any(k.startswith("heads.projection.") for k in state["model"]) == recipe.startswith("ppc")
    assert json.loads((out / "pseudo" / "metrics.json").read_text())["cam_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["spml-tags", "spml-boxes"])
def test_spml_from_tags_and_boxes_trains_on_the_cam_pseudo_labels(shapes: Path, tmp_path: Path, recipe: str) -> None:
    out = tmp_path / recipe
    extra = ("stages.cam.train.steps=2", f"method_args.region_cache={tmp_path / 'regions'}")
    result = _pipeline(shapes, out, recipe, *extra).run()
    assert list(result.stage_wall_s) == ["cam", "pseudo", "seg", "relabel", "classifier"]
    assert load_checkpoint(out / "cam" / "last.pt")["recipe"]["method"] == "cam"
    seg = load_checkpoint(out / "seg" / "last.pt")
    assert seg["recipe"]["method"] == "spml" and seg["recipe"]["data"]["train_masks"].endswith("pseudo/labels")
    assert any(k.startswith("heads.embedding.") for k in seg["model"]) and len(seg["method"]["bank._extra_state"]) == 2
    assert 0 <= result.metrics["miou"] <= 1 and "seed" in result.metrics["pseudo_labels"]
    # The initial classifier relabels the training images; a new classifier on the frozen embedding learns them.
    assert len(list((out / "relabel" / "labels").glob("*.png"))) == 8
    assert 0 <= result.metrics["relabel"]["miou"] <= 1
    final = load_checkpoint(out / "classifier" / "last.pt")
    assert final["recipe"]["data"]["train_masks"].endswith("relabel/labels")
    assert final["recipe"]["method_args"]["classifier_only"] is True
    for name, value in final["model"].items():
        assert name.startswith("classifier.") or torch.equal(value, seg["model"][name]), name  # the embedding: frozen
    assert not torch.equal(final["model"]["classifier.net.0.weight"], seg["model"]["classifier.net.0.weight"])
    assert result.final_checkpoint.parent.name == "classifier"
    again = _pipeline(shapes, out, recipe, *extra)
    assert all(again.finished(name) for name in again.names)  # resume skips every stage, relabel included
    assert final_checkpoint(out) == out / "classifier" / "last.pt"  # `weakseg eval RUN_DIR` takes the final model


@pytest.mark.slow
def test_spml_trains_from_mixed_supervision(shapes: Path, tmp_path: Path) -> None:
    """Each image carries one kind of label; no per-image handling in the recipe."""
    assignment = mix_labels(shapes / "labels", tmp_path / "mixed", LABEL_KINDS, seed=0)
    extra = (
        "stages.cam.train.steps=2",
        f"data.labels={tmp_path / 'mixed'}",
        f"method_args.region_cache={tmp_path / 'r'}",
    )
    result = _pipeline(shapes, tmp_path / "run", "spml-mixed", *extra).run()
    assert list(result.stage_wall_s) == ["cam", "pseudo", "seg", "relabel", "classifier"]
    seeds = json.loads((tmp_path / "run" / "pseudo" / "metrics.json").read_text())
    assert seeds["images"] == len(assignment) == 8 and seeds["kind"] == "mixed"
    assert 0 <= result.metrics["miou"] <= 1


def test_seg_stage_trains_on_the_pseudo_labels(shapes: Path, tmp_path: Path) -> None:
    pipeline = _pipeline(shapes, tmp_path)
    seg = pipeline.stage_recipe("seg")
    assert (seg.method, seg.supervision) == ("full", "full")
    assert Path(seg.data.train_masks) == (tmp_path / "pseudo" / "labels").resolve()
    assert seg.output_dir == str(tmp_path / "seg")
    cam = pipeline.stage_recipe("cam")
    assert cam.augment.scale_range == (0.4, 0.7) and cam.train.steps == 300  # the recipe's stage overlay
    assert seg.augment.scale_range != cam.augment.scale_range


@pytest.mark.slow
def test_resume_skips_finished_stages_and_continues_the_unfinished_one(shapes: Path, tmp_path: Path) -> None:
    pipeline = _pipeline(shapes, tmp_path, "cam-tags", "stages.cam.train.steps=4")
    Trainer(pipeline.stage_recipe("cam"), progress=False).fit(until=2)  # interrupted after step 2
    assert not pipeline.finished("cam")
    result = pipeline.run(resume=True)
    assert list(result.stage_wall_s) == ["cam", "pseudo", "seg"] and result.resumed_stages == ["cam"]
    history = load_checkpoint(tmp_path / "cam" / "last.pt")["history"]
    assert [row["step"] for row in history if "loss" in row] == [1, 2, 3, 4]  # steps 1–2 kept, 3–4 resumed
    again = pipeline.run(resume=True)
    assert again.stage_wall_s == {} and again.metrics["miou"] == result.metrics["miou"]
    assert again.resumed_stages == ["cam", "pseudo", "seg"]


@pytest.mark.slow
def test_start_at_a_stage_reuses_the_earlier_ones(shapes: Path, tmp_path: Path) -> None:
    _pipeline(shapes, tmp_path, "cam-tags", "stages.cam.train.steps=2").run()
    cam_mtime = (tmp_path / "cam" / "last.pt").stat().st_mtime_ns
    changed = _pipeline(shapes, tmp_path, "cam-tags", "stages.cam.train.steps=2", "pseudo.refine=none")
    assert changed.finished("cam") and not changed.finished("pseudo")
    result = changed.run(start="pseudo")
    assert list(result.stage_wall_s) == ["pseudo", "seg"]
    assert (tmp_path / "cam" / "last.pt").stat().st_mtime_ns == cam_mtime
    assert json.loads((tmp_path / "pseudo" / "metrics.json").read_text())["config"]["pseudo"]["refine"] == "none"


@pytest.mark.slow
def test_until_stops_after_a_stage_and_start_continues(shapes: Path, tmp_path: Path) -> None:
    result = _pipeline(shapes, tmp_path, "cam-tags", "stages.cam.train.steps=2").run(until="pseudo")
    assert list(result.stage_wall_s) == ["cam", "pseudo"] and not (tmp_path / "seg").exists()
    assert "seed" in result.metrics["pseudo_labels"] and "miou" not in result.metrics
    rest = _pipeline(shapes, tmp_path, "cam-tags", "stages.cam.train.steps=2").run(start="seg")
    assert list(rest.stage_wall_s) == ["seg"] and rest.final_checkpoint.is_file()


def test_start_needs_the_earlier_stages(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="stage 'cam' has not finished"):
        _pipeline(shapes, tmp_path).run(start="seg")
    with pytest.raises(ConfigError, match="has stages cam, pseudo, seg"):
        _pipeline(shapes, tmp_path).run(start="nope")
    with pytest.raises(ConfigError, match="--until nope: method 'cam' has stages"):
        _pipeline(shapes, tmp_path).run(until="nope")
    with pytest.raises(ConfigError, match="--until cam comes before --stage pseudo"):
        _pipeline(shapes, tmp_path).run(start="pseudo", until="cam")


def test_stage_overlays_are_checked(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stages.train: method 'cam' has stages"):
        _pipeline(shapes, tmp_path, "cam-tags", "stages.train.train.steps=3")
    with pytest.raises(ConfigError, match="stages.cam.train.stepz"):
        _pipeline(shapes, tmp_path, "cam-tags", "stages.cam.train.stepz=3")


def test_single_stage_methods_write_to_the_output_dir(shapes: Path, tmp_path: Path) -> None:
    result = _pipeline(shapes, tmp_path, "pce-points").run()
    assert list(result.stage_wall_s) == ["train"] and (tmp_path / "last.pt").is_file()
    assert result.final_checkpoint == tmp_path / "last.pt" and "pseudo_labels" not in result.metrics


@pytest.mark.slow
def test_cams_recover_the_objects_of_the_demo_data(tmp_path: Path) -> None:
    """On the demo's shapes, tag-trained CAMs label the training images far better than the filled image, and PAMR
    improves them. The small textured shapes give diffuse CAMs at stride 16 on 160² images, so the background
    threshold is the data's (0.5; the default 0.15 suits peaky CAMs on photos) and the ignore band moves with it."""
    from weakseg.data.dataset import SegmentationDataset, resolve_class_set, voc_layout
    from weakseg.data.simulate import LabelProtocol, derive_labels
    from weakseg.data.synthetic import generate_shapes_dataset

    root = generate_shapes_dataset(tmp_path / "data", num_train=32, num_val=4, seed=1)
    data = voc_layout(root)
    derive_labels(SegmentationDataset(data, "train").masks(), resolve_class_set(data), root / "labels", ("tags",),
                  LabelProtocol(seed=0), progress=False)  # fmt: skip
    overrides = [
        f"data.root={root}",
        f"data.labels={root / 'labels'}",
        f"output_dir={tmp_path / 'run'}",
        "model.weights=package",
        "data.num_workers=0",
        "stages.cam.train.steps=60",
        "stages.cam.augment.scale_range=[0.7, 0.9]",
        "pseudo.background_param=0.5",
        "pseudo.ignore_band=[0.3, 0.7]",
    ]
    pipeline = Pipeline(load_recipe(["cam-tags", "demo"], overrides), progress=False)
    pipeline.run_training("cam", resume=False)
    metrics = pipeline.run_pseudo_labels(pipeline.stage("pseudo"))
    baseline, seed, refined = (metrics[k]["miou"] for k in ("baseline", "seed", "refined"))
    assert seed > baseline + 0.15, metrics
    assert refined > seed + 0.03, metrics
    assert metrics["pseudo"]["miou"] >= refined - 0.02  # the kept pixels are at least as clean as the dense map


def test_box_prior_labels_the_boxes_without_a_model_then_trains(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "box-prior"
    result = _pipeline(shapes, out, "box-prior-boxes").run()
    assert list(result.stage_wall_s) == ["pseudo", "seg"]
    seeds = json.loads((out / "pseudo" / "metrics.json").read_text())
    assert seeds["config"]["checkpoint"] is None and "classifier" not in seeds and "cam_step" not in seeds
    # GrabCut cuts the shapes out of their boxes: better than the filled boxes (the baseline) on the train masks.
    assert seeds["seed"]["miou"] > seeds["baseline"]["miou"] + 0.05
    fill = tmp_path / "box-fill"
    _pipeline(shapes, fill, "box-fill-boxes").run(until="pseudo")
    filled = json.loads((fill / "pseudo" / "metrics.json").read_text())
    # Filled boxes again; where boxes of two classes overlap the class of the smaller smallest box wins, which can
    # differ from the baseline's box-by-box order where a class has boxes of very different sizes.
    assert filled["seed"]["miou"] == filled["refined"]["miou"] == filled["pseudo"]["miou"]
    assert filled["seed"]["miou"] == pytest.approx(filled["baseline"]["miou"], abs=0.01)
    assert load_checkpoint(out / "seg" / "last.pt")["step"] == 4
