"""The benchmark runner: row planning, fingerprints, one row end to end on tiny data, ratios."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, needs_voc454
from weakseg import bench
from weakseg.bench import (
    DATASETS,
    BenchDataset,
    Row,
    ensure_labels,
    plan_rows,
    recipe_eras,
    recorded_with,
    run_row,
    update_ratios,
    variant_recorded,
)
from weakseg.config import apply_overrides, from_dict, to_dict
from weakseg.data.formats import read_coco_boxes, read_points_json, write_json
from weakseg.data.simulate import LabelProtocol
from weakseg.engine.recipe import Recipe, load_recipe
from weakseg.engine.trainer import Trainer
from weakseg.errors import ConfigError
from weakseg.methods import METHODS
from weakseg.methods.pmp import PMPArgs
from weakseg.pseudo.cam import PseudoLabelConfig
from weakseg.pseudo.point_blots import PointBlotConfig

REQUIRED = {
    "miou", "per_class_iou", "boundary_f", "jf", "ratio_to_full", "train_images_per_s", "infer_images_per_s",
    "peak_rss_mb", "wall_s", "device", "labels_protocol", "labelled_pixel_fraction", "seed", "git_commit", "command",
}  # fmt: skip


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    for folder in ("voc454", "camvid"):
        (tmp_path / folder).mkdir()
    return tmp_path


def test_plan_rows_follows_datasets_and_methods(data_root: Path, tmp_path: Path) -> None:
    rows = plan_rows("standard", ["voc454", "camvid"], ["full", "pce"], None, data_root, tmp_path)
    names = [(r.dataset.name, r.name) for r in rows]
    assert names == [
        ("voc454", "full-full"), ("voc454", "pce-points"), ("voc454", "pce-scribbles"),
        ("camvid", "full-full"), ("camvid", "pce-points"), ("camvid", "pce-scribbles"),
    ]  # fmt: skip
    only = plan_rows("quick", ["camvid"], ["full", "pce"], ["scribbles"], data_root, tmp_path)
    assert [r.name for r in only] == ["full-full", "pce-scribbles"]
    assert rows[1].json_path == tmp_path / "standard" / "voc454" / "pce-points.json"


def test_variant_rows_train_a_registered_method_with_their_own_recipe(data_root: Path, tmp_path: Path) -> None:
    rows = plan_rows("standard", ["voc454"], ["seam", "ppc", "ppc-hfpl"], ["tags"], data_root, tmp_path, [0, 1])
    assert [r.name for r in rows] == [
        "seam-tags", "seam-tags-seed1", "ppc-tags", "ppc-tags-seed1", "ppc-hfpl-tags", "ppc-hfpl-tags-seed1",
    ]  # fmt: skip
    recipe = rows[-1].recipe(tmp_path)
    assert recipe.method == "ppc" and recipe.method_args["base"] == "hfpl" and recipe.train.seed == 1
    assert recipe.stages["cam"]["train"]["steps"] == 300  # the CAM stage keeps its own schedule
    assert [r.name for r in plan_rows("quick", ["voc454"], ["ppc-hfpl"], None, data_root, tmp_path)] == [
        "ppc-hfpl-tags"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("huge", ["voc454"], ["full"]), "unknown profile"),
        (("quick", ["coco"], ["full"]), "unknown benchmark dataset"),
        (("quick", ["voc454"], ["magic"]), "unknown method"),
    ],
)
def test_plan_rows_rejects_unknown_names(data_root: Path, args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_rows(*args, None, data_root, data_root)


def test_missing_benchmark_data_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="benchmark data not found"):
        plan_rows("quick", ["voc454"], ["full"], None, tmp_path, tmp_path)


def test_fingerprint_tracks_the_recipe_not_the_paths(data_root: Path, tmp_path: Path) -> None:
    (data_root / "voc454" / "image_labels.json").write_text("{}")
    row = plan_rows("standard", ["voc454"], ["pce"], ["points"], data_root, tmp_path)[0]
    assert row.fingerprint(tmp_path / "a") == row.fingerprint(tmp_path / "b")
    quick = Row("quick", row.dataset, row.method, row.supervision, row.data_root, row.results)
    assert quick.fingerprint(tmp_path) != row.fingerprint(tmp_path)
    pmp = plan_rows("standard", ["voc454"], ["pmp"], ["points"], data_root, tmp_path)[0]  # keeps a blot cache
    assert pmp.fingerprint(tmp_path / "a") == pmp.fingerprint(tmp_path / "b")
    assert "blot_cache" not in pmp.method_args(tmp_path / "a")


def test_keys_added_later_leave_fingerprints_alone_at_their_defaults(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_root / "voc454" / "image_labels.json").write_text("{}")
    row = plan_rows("standard", ["voc454"], ["pce"], ["points"], data_root, tmp_path)[0]
    before = row.fingerprint(tmp_path)
    monkeypatch.setattr(bench, "SHARED", [*bench.SHARED, "train.norm=frozen"])
    assert row.fingerprint(tmp_path) != before  # a non-default value is part of the protocol


def test_a_row_stored_in_an_earlier_era_of_later_keys_is_current(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_root / "voc454" / "image_labels.json").write_text("{}")
    row = plan_rows("standard", ["voc454"], ["pce"], ["points"], data_root, tmp_path)[0]
    assert not row.is_current(tmp_path)
    # Stored when only the first later key existed: it sits in the recipe at its default, the others are absent.
    monkeypatch.setattr(bench, "LATER_KEYS", bench.LATER_KEYS[1:])
    stored = row.fingerprint(tmp_path)
    monkeypatch.undo()
    assert stored != row.fingerprint(tmp_path) and stored in row.fingerprints(tmp_path)
    row.json_path.parent.mkdir(parents=True)
    row.json_path.write_text(json.dumps({"fingerprint": stored}))
    assert row.is_current(tmp_path)
    # The same era with a non-default value of a later key is a different protocol.
    monkeypatch.setattr(bench, "SHARED", [*bench.SHARED, "train.norm=frozen"])
    assert not row.is_current(tmp_path)


def test_method_args_fill_in_the_code_defaults_without_cache_folders(data_root: Path, tmp_path: Path) -> None:
    (data_root / "voc454" / "image_labels.json").write_text("{}")
    row = plan_rows("standard", ["voc454"], ["pmp-pretrained"], ["points"], data_root, tmp_path)[0]
    args = row.method_args(tmp_path)
    assert row.recipe(tmp_path).method_args["threshold"] == 0.75 and args["threshold"] == 0.75  # the recipe's value
    assert args["use_refiner"] == PMPArgs.use_refiner and args["blots"] == to_dict(PointBlotConfig())  # code defaults
    assert args == json.loads(json.dumps(args))


def test_a_changed_default_in_the_code_makes_a_row_stale(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_root / "voc454" / "image_labels.json").write_text("{}")
    row = plan_rows("standard", ["voc454"], ["pmp"], ["points"], data_root, tmp_path)[0]
    row.json_path.parent.mkdir(parents=True)
    row.json_path.write_text(json.dumps({"fingerprint": row.fingerprint(tmp_path)}))
    assert row.is_current(tmp_path)  # recorded before method arguments were kept: judged by the fingerprint
    row.json_path.write_text(
        json.dumps({"fingerprint": row.fingerprint(tmp_path), "method_args": row.method_args(tmp_path)})
    )
    assert row.is_current(tmp_path)
    fingerprint = row.fingerprint(tmp_path)

    @dataclasses.dataclass
    class RecipeSetDefault(PMPArgs):
        object_rate: float = 3.0  # the recipe sets it: nothing changes

    @dataclasses.dataclass
    class NewDefault(PMPArgs):
        use_refiner: bool = False  # the recipe leaves it to the code

    monkeypatch.setattr(METHODS["pmp"], "Args", RecipeSetDefault)
    assert row.is_current(tmp_path)
    monkeypatch.setattr(METHODS["pmp"], "Args", NewDefault)
    assert row.fingerprint(tmp_path) == fingerprint  # the recipe as written did not change
    assert not row.is_current(tmp_path)


def test_recipe_eras_drop_the_later_keys_at_their_defaults_from_the_newest_back() -> None:
    recipe = to_dict(load_recipe(["pce-points"], ["data.root=."]))
    assert bench.LATER_KEYS[-2] == (("train", "tensorboard"), True) and recipe["train"]["tensorboard"] is True
    eras = recipe_eras(recipe)
    assert len(eras) == len(bench.LATER_KEYS) + 1 and eras[-1] == recipe
    assert "norm" not in eras[-2]["model"] and eras[-2]["train"]["tensorboard"] is True  # before the newest key
    assert "tensorboard" not in eras[-3]["train"] and eras[-3]["train"]["norm"] == "batch"
    assert "norm" not in eras[0]["train"] and "crf" not in eras[0]["eval"]
    recipe["train"]["tensorboard"] = False  # a non-default value stays in every era
    assert all(era["train"]["tensorboard"] is False for era in recipe_eras(recipe))
    assert recipe_eras({"train": {"tensorboard": True}})[0] == {"train": {}}  # sections left out (ablate.py's)


def test_the_from_scratch_upper_bound_trains_pmps_model_on_full_masks(data_root: Path, tmp_path: Path) -> None:
    (data_root / "voc454" / "image_labels.json").write_text("{}")
    full, scratch, pmp = plan_rows("standard", ["voc454"], ["full", "full-scratch", "pmp"], None, data_root, tmp_path)
    assert scratch.name == "full-scratch-full" and scratch.json_path.name == "full-scratch-full.json"
    recipes = [row.recipe(tmp_path) for row in (full, scratch, pmp)]
    assert recipes[1].method == "full" and recipes[1].model == recipes[2].model != recipes[0].model
    assert recipes[1].model.norm == "group_ws" and not recipes[1].model.pretrained
    assert recipes[1].train == recipes[2].train and recipes[1].augment == recipes[2].augment
    assert scratch.fingerprint(tmp_path) != full.fingerprint(tmp_path)


def test_a_moved_key_goes_back_to_its_old_place_in_the_eras_before_the_move() -> None:
    assert bench.LATER_KEYS[-1] == (("model", "norm"), "batch")
    for name, norm in (("pmp-points", "group_ws"), ("pmp-pretrained-points", "batch")):
        recipe = to_dict(load_recipe([name], ["data.root=."]))
        *before, now = recipe_eras(recipe)
        assert now["model"]["norm"] == norm and "norm" not in now["method_args"]
        assert all("norm" not in era["model"] and era["method_args"]["norm"] == norm for era in before)
    record = {"method_args": {"norm": "group_ws", "threshold": 0.75}}  # recorded when pmp held `norm`
    assert recorded_with(record, "pmp", {"threshold": 0.75})
    assert not recorded_with(record, "pce", {"threshold": 0.75})  # the key moved out of pmp's arguments only
    assert not recorded_with(record, "pmp", {"threshold": 0.5})


@needs_voc454
@pytest.mark.parametrize(
    ("method", "supervision"),
    [("cam", "tags"), ("full", "full"), ("rloss", "scribbles"), ("pmp", "points"), ("pmp-pretrained", "points")],
)
def test_a_row_recorded_before_a_later_key_existed_is_still_current(
    tmp_path: Path, method: str, supervision: str
) -> None:
    recorded = Path(__file__).parents[1] / "benchmarks" / "results"
    row = plan_rows("standard", ["voc454"], [method], [supervision], SHARED_DATA, recorded)[0]
    assert row.is_current(tmp_path)


@needs_voc454
@pytest.mark.parametrize(("method", "supervision"), [("spml", "points"), ("spml", "scribbles"), ("pmp", "points")])
def test_recorded_ablation_variants_are_current(tmp_path: Path, method: str, supervision: str) -> None:
    recorded = Path(__file__).parents[1] / "benchmarks" / "results"
    table = json.loads((recorded / "ablations" / f"voc454-{method}-{supervision}.json").read_text())
    row = plan_rows("standard", ["voc454"], [method], [supervision], SHARED_DATA, recorded)[0]
    variants = {name: record for name, record in table.items() if "recipe" in record}  # not the bench rows
    assert variants
    for record in variants.values():
        recipe = from_dict(Recipe, apply_overrides(to_dict(row.recipe(tmp_path)), record["overrides"]))
        assert variant_recorded(record, recipe)
        changed = from_dict(Recipe, apply_overrides(to_dict(recipe), ["train.steps=10"]))
        assert not variant_recorded(record, changed)


@pytest.fixture
def tiny_row(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Row:
    """A `pce` scribbles row on the shapes data: 4 steps, a checkpoint every 2."""
    tiny = BenchDataset("shapes", shapes.name, "voc", protocol=LabelProtocol(min_component_area=4))
    monkeypatch.setitem(DATASETS, "shapes", tiny)
    monkeypatch.setitem(bench.PROFILES, "quick", ["train.steps=4", "train.ckpt_every=2"])
    monkeypatch.setattr(bench, "SHARED", ["augment.crop_size=48", "train.batch_size=2", "data.num_workers=0",
                                          "model.head_channels=16", "model.pretrained=false"])  # fmt: skip
    return Row("quick", tiny, "pce", "scribbles", shapes.parent, tmp_path / "results")


def test_one_row_end_to_end(tiny_row: Row, tmp_path: Path) -> None:
    row = tiny_row
    record = run_row(row, tmp_path / "cache", "abc123")
    assert set(record) >= REQUIRED
    assert record["git_commit"] == "abc123" and record["seed"] == 0
    assert 0 < record["labelled_pixel_fraction"] < 0.5
    assert record["labels_protocol"].startswith("scribbles: 50% of each component's skeleton")
    assert record["fingerprint"] == row.fingerprint(tmp_path / "cache")
    assert set(record["per_class_iou"]) == {"background", "disc", "square", "triangle", "ring"}
    assert (tmp_path / "cache" / "labels" / "shapes").is_dir()


def test_an_interrupted_row_resumes_where_it_stopped(
    tiny_row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = run_row(tiny_row, tmp_path / "whole", "abc123")
    assert "resumed_stages" not in uninterrupted
    cache = tmp_path / "cache"
    save = Trainer.save

    def save_then_stop(trainer: Trainer, name: str) -> None:
        save(trainer, name)
        if trainer.step == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_row(tiny_row, cache, "abc123", resume=True)
    resumed = run_row(tiny_row, cache, "abc123", resume=True)
    assert resumed["resumed_stages"] == ["train"]
    assert resumed["miou"] == uninterrupted["miou"]  # the same weights: resuming is exact on CPU
    assert resumed["train_images_per_s"] > 0 and "random" in resumed["backbone"]


def test_a_row_does_not_resume_checkpoints_of_another_recipe(tiny_row: Row, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run_row(tiny_row, cache, "abc123")
    marker = Path(tiny_row.recipe(cache).output_dir) / bench.ROW_MARKER
    trained_under = {"fingerprint": tiny_row.fingerprint(cache), "method_args": tiny_row.method_args(cache)}
    assert json.loads(marker.read_text()) == trained_under
    write_json(marker, {**trained_under, "fingerprint": "another recipe"})
    assert "resumed_stages" not in run_row(tiny_row, cache, "abc123", resume=True)
    write_json(marker, {**trained_under, "method_args": {"other": "defaults"}})
    assert "resumed_stages" not in run_row(tiny_row, cache, "abc123", resume=True)
    finished = run_row(tiny_row, cache, "abc123", resume=True)  # nothing left to train: recorded figures reused
    assert finished["resumed_stages"] == ["train"] and finished["train_images_per_s"] > 0


def test_a_run_folder_is_claimed_by_the_fingerprint_and_arguments_its_checkpoints_had(tmp_path: Path) -> None:
    assert not bench.claim_run_folder(tmp_path, {"recipe": 1}, {"a": 1})  # a new folder: nothing to continue
    assert bench.claim_run_folder(tmp_path, {"recipe": 1}, {"a": 1})
    assert not bench.claim_run_folder(tmp_path, {"recipe": 1}, {"a": 2})  # other arguments take the folder over
    assert not bench.claim_run_folder(tmp_path, {"recipe": 2}, {"a": 2})
    assert bench.claim_run_folder(tmp_path, {"recipe": 2}, {"a": 2})


def test_box_centre_rows_share_voc454_under_the_pmp_point_protocol(data_root: Path, tmp_path: Path) -> None:
    rows = plan_rows("standard", ["voc454-box-centres"], ["full", "pce", "pmp"], None, data_root, tmp_path)
    assert [r.name for r in rows] == ["full-full", "pce-points", "pmp-points"]
    voc454 = plan_rows("standard", ["voc454"], ["pce"], ["points"], data_root, tmp_path)[0]
    assert rows[1].recipe(tmp_path).data.root == voc454.recipe(tmp_path).data.root
    assert rows[1].labels_dir(tmp_path) != voc454.labels_dir(tmp_path)
    assert rows[1].json_path.parent.name == "voc454-box-centres"


def test_box_centre_labels_are_a_centre_and_4_background_points_per_box(shapes: Path, tmp_path: Path) -> None:
    paper = BenchDataset("shapes", shapes.name, "voc", protocol=LabelProtocol(points_mode="box-centres"))
    row = Row("quick", paper, "pmp", "points", shapes.parent, tmp_path / "results")
    summary = ensure_labels(row, tmp_path)["summary"]
    labels = row.labels_dir(tmp_path)
    boxes, points = read_coco_boxes(labels / "boxes_coco.json"), read_points_json(labels / "points.json")
    assert summary["points"]["total"] == 5 * sum(len(b) for b in boxes.values()) > 0
    for image_id, image_boxes in boxes.items():
        centres = np.floor((image_boxes[:, :2] + image_boxes[:, 2:4]) / 2)
        assert np.array_equal(points[image_id][: len(image_boxes), :2], centres)
        assert (points[image_id][len(image_boxes) :, 2] == 0).all()  # then background points


def test_update_ratios_uses_the_full_row(tmp_path: Path) -> None:
    folder = tmp_path / "standard" / "voc454"
    write_json(folder / "full-full.json", {"miou": 0.5, "ratio_to_full": None})
    write_json(folder / "pce-points.json", {"miou": 0.4, "ratio_to_full": None})
    update_ratios(tmp_path, "standard")
    assert json.loads((folder / "pce-points.json").read_text())["ratio_to_full"] == pytest.approx(0.8)
    assert json.loads((folder / "full-full.json").read_text())["ratio_to_full"] == pytest.approx(1.0)


def test_mixed_rows_deal_the_train_images_one_kind_each(shapes: Path, tmp_path: Path, data_root: Path) -> None:
    rows = plan_rows("standard", ["voc454"], ["pce", "spml"], ["mixed"], data_root, tmp_path)
    assert [r.name for r in rows] == ["spml-mixed"]  # pce has no mixed recipe
    tiny = BenchDataset("shapes", shapes.name, "voc", protocol=LabelProtocol(min_component_area=4))
    row = Row("quick", tiny, "spml", "mixed", shapes.parent, tmp_path / "results")
    bench.ensure_labels(row, tmp_path / "cache")
    mixed = json.loads((row.labels_dir(tmp_path / "cache") / "mixed" / "mixed.json").read_text())
    assert sorted(mixed["assignment"].values()).count("points") == 2 and len(mixed["assignment"]) == 8
    assert row.recipe(tmp_path / "cache").data.labels.endswith("/mixed")


def test_pseudo_summary_keeps_the_seed_scores_at_every_threshold() -> None:
    scores = {"miou": 0.2, "boundary_f": 0.1, "jf": 0.15, "per_class_iou": [0.2]}
    sweep = {"thresholds": [0.0, 0.5], "miou": [0.3, 0.2], "best": {"threshold": 0.0, "miou": 0.3}}
    metrics = {**dict.fromkeys(("baseline", "seed", "refined"), scores), "pseudo": {"miou": 0.25}, "coverage": 0.8,
               "images": 4, "seed_thresholds": sweep}  # fmt: skip
    summary = bench.pseudo_summary(metrics, PseudoLabelConfig())
    assert summary["seed_thresholds"] == sweep and summary["seed"] == {"miou": 0.2, "boundary_f": 0.1}
    assert summary["pseudo"] == {"miou": 0.25, "coverage": 0.8} and summary["images"] == 4


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_terminated_bench_stops_its_row_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent_code = (
        f"from weakseg.bench import run_child_process; run_child_process([{sys.executable!r}, '-c', {sleeper!r}])"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # reaped by the parent, not left running
        os.kill(child_pid, 0)


def test_run_child_process_returns_the_exit_code() -> None:
    assert bench.run_child_process([sys.executable, "-c", "raise SystemExit(3)"]) == 3
