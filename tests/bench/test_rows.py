"""Row planning, a row's recipe, and the currency rule: a record is current iff today's schema reads its recipe and
labels into today's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, needs_voc454
from weakseg.bench.protocol import STANDARD, Protocol
from weakseg.bench.rows import Row, plan_rows, read_recipe
from weakseg.config import to_dict
from weakseg.errors import ConfigError
from weakseg.methods import METHODS
from weakseg.methods.pmp import PMPArgs
from weakseg.pseudo.point_blots import PointBlotConfig

RECORDED = Path(__file__).parents[2] / "benchmarks" / "results"


def test_plan_rows_follows_datasets_and_methods(data_root: Path, tmp_path: Path) -> None:
    rows = plan_rows(STANDARD, "standard", ["voc454", "camvid"], ["full", "pce"], None, data_root, tmp_path)
    names = [(r.dataset.name, r.name) for r in rows]
    assert names == [
        ("voc454", "full-full"), ("voc454", "pce-points"), ("voc454", "pce-scribbles"),
        ("camvid", "full-full"), ("camvid", "pce-points"), ("camvid", "pce-scribbles"),
    ]  # fmt: skip
    only = plan_rows(STANDARD, "quick", ["camvid"], ["full", "pce"], ["scribbles"], data_root, tmp_path)
    assert [r.name for r in only] == ["full-full", "pce-scribbles"]
    assert rows[1].json_path == tmp_path / "standard" / "voc454" / "pce-points.json"


def test_variant_rows_train_a_registered_method_with_their_own_recipe(data_root: Path, tmp_path: Path) -> None:
    methods = ["seam", "ppc", "ppc-hfpl"]
    rows = plan_rows(STANDARD, "standard", ["voc454"], methods, ["tags"], data_root, tmp_path, [0, 1])
    assert [r.name for r in rows] == [
        "seam-tags", "seam-tags-seed1", "ppc-tags", "ppc-tags-seed1", "ppc-hfpl-tags", "ppc-hfpl-tags-seed1",
    ]  # fmt: skip
    recipe = rows[-1].recipe(tmp_path)
    assert recipe.method == "ppc" and recipe.method_args["base"] == "hfpl" and recipe.train.seed == 1
    assert recipe.stages["cam"]["train"]["steps"] == 300  # the CAM stage keeps its own schedule
    assert [r.name for r in plan_rows(STANDARD, "quick", ["voc454"], ["ppc-hfpl"], None, data_root, tmp_path)] == [
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
        plan_rows(STANDARD, *args, None, data_root, data_root)


def test_missing_benchmark_data_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="benchmark data not found"):
        plan_rows(STANDARD, "quick", ["voc454"], ["full"], None, tmp_path, tmp_path)


def test_the_protocol_is_an_argument(tiny: Protocol, shapes: Path, tmp_path: Path) -> None:
    rows = plan_rows(tiny, "quick", ["shapes"], ["full", "pce"], ["points"], shapes.parent, tmp_path)
    assert [r.name for r in rows] == ["full-full", "pce-points"]
    recipe = rows[1].recipe(tmp_path)
    assert recipe.train.steps == 4 and recipe.augment.crop_size == 48 and not recipe.model.pretrained
    with pytest.raises(ConfigError, match="unknown benchmark dataset"):
        plan_rows(tiny, "quick", ["voc454"], ["full"], None, shapes.parent, tmp_path)


@pytest.mark.parametrize(("method", "supervision"), [("pce", "points"), ("pmp", "points"), ("spml", "mixed")])
def test_a_record_holds_the_resolved_recipe_without_machine_paths(
    data_root: Path, tmp_path: Path, method: str, supervision: str
) -> None:
    row = plan_rows(STANDARD, "standard", ["voc454"], [method], [supervision], data_root, tmp_path)[-1]
    cache = tmp_path / "a" / "cache"
    assert row.recipe(cache).output_dir.startswith(str(cache)) and row.recipe(cache).data.labels
    provenance = row.provenance(cache)
    text = json.dumps(provenance.as_record())
    assert str(tmp_path) not in text and "cache" not in text  # no output, label or cache folder
    assert provenance.recipe["data"]["root"] == "voc454" and "labels" not in provenance.recipe["data"]
    assert provenance == row.provenance(tmp_path / "b")  # the same wherever the machine keeps its files
    assert provenance.profile == "standard" and provenance.labels["given_boxes"] == "boxes_coco.json"
    quick = Row(STANDARD, "quick", row.dataset, row.method, row.supervision, row.data_root, row.results)
    assert quick.provenance(cache) != provenance


def test_method_args_are_stored_with_the_code_defaults(data_root: Path, tmp_path: Path) -> None:
    row = plan_rows(STANDARD, "standard", ["voc454"], ["pmp-pretrained"], ["points"], data_root, tmp_path)[0]
    args = row.provenance(tmp_path).recipe["method_args"]
    assert row.recipe(tmp_path).method_args["threshold"] == 0.75 and args["threshold"] == 0.75  # the recipe's value
    assert args["use_refiner"] == PMPArgs.use_refiner and args["blots"] == to_dict(PointBlotConfig())  # code defaults
    assert "blot_cache" not in args


@pytest.fixture
def recorded_row(data_root: Path, tmp_path: Path) -> Row:
    """The standard `pce-points` row with a record made now."""
    row = plan_rows(STANDARD, "standard", ["voc454"], ["pce"], ["points"], data_root, tmp_path)[0]
    assert not row.is_current(tmp_path)
    row.json_path.parent.mkdir(parents=True)
    row.json_path.write_text(json.dumps({"miou": 0.5, **row.provenance(tmp_path).as_record()}))
    assert row.is_current(tmp_path)
    return row


def _edit_record(row: Row, edit: object) -> None:
    record = json.loads(row.json_path.read_text())
    edit(record)
    row.json_path.write_text(json.dumps(record))


def test_a_key_added_later_at_its_old_behaviour_leaves_a_record_current(recorded_row: Row, tmp_path: Path) -> None:
    # Recorded before train.tensorboard and eval.crf existed: their defaults are what the code did then.
    _edit_record(recorded_row, lambda r: (r["recipe"]["train"].pop("tensorboard"), r["recipe"]["eval"].pop("crf")))
    assert recorded_row.is_current(tmp_path)


def test_a_stage_key_that_repeats_the_recipes_value_leaves_a_record_current(recorded_row: Row, tmp_path: Path) -> None:
    # Recorded with stages.seg.train.lr spelt out at the recipe's own value: the stage ran the same recipe.
    _edit_record(
        recorded_row, lambda r: r["recipe"]["stages"].update(seg={"train": {"lr": r["recipe"]["train"]["lr"]}})
    )
    assert recorded_row.is_current(tmp_path)
    _edit_record(recorded_row, lambda r: r["recipe"]["stages"].update(seg={"train": {"lr": 0.123}}))
    assert not recorded_row.is_current(tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["recipe"]["train"].update(tensorboard=False),  # recorded under another value (or default)
        lambda r: r["recipe"]["train"].update(stepz=700),  # a key the schema does not have
        lambda r: r["recipe"]["method_args"].update(magic=1),  # the method's arguments are read by its schema too
        lambda r: r["labels"]["protocol"].update(seed=1),  # other labels
        lambda r: r["labels"]["protocol"].update(colour="red"),
        lambda r: r.update(profile="quick"),
        lambda r: r.pop("recipe"),  # a record without one
    ],
)
def test_another_value_or_an_unknown_key_makes_a_record_stale(recorded_row: Row, tmp_path: Path, edit: object) -> None:
    _edit_record(recorded_row, edit)
    assert not recorded_row.is_current(tmp_path)


def test_a_changed_default_in_the_code_makes_a_record_stale(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = plan_rows(STANDARD, "standard", ["voc454"], ["pmp"], ["points"], data_root, tmp_path)[0]
    record = row.provenance(tmp_path).as_record()

    @dataclasses.dataclass
    class RecipeSetDefault(PMPArgs):
        object_rate: float = 3.0  # the recipe sets it: nothing changes

    @dataclasses.dataclass
    class NewDefault(PMPArgs):
        use_refiner: bool = False  # the recipe leaves it to the code

    monkeypatch.setattr(METHODS["pmp"], "Args", RecipeSetDefault)
    assert row.provenance(tmp_path).made(record)
    monkeypatch.setattr(METHODS["pmp"], "Args", NewDefault)
    assert not row.provenance(tmp_path).made(record)


def test_a_moved_key_is_read_at_its_new_place(data_root: Path, tmp_path: Path) -> None:
    row = plan_rows(STANDARD, "standard", ["voc454"], ["pmp"], ["points"], data_root, tmp_path)[0]
    provenance = row.provenance(tmp_path)
    before_the_move = json.loads(json.dumps(provenance.recipe))
    before_the_move["method_args"]["norm"] = before_the_move["model"].pop("norm")  # where pmp's recipes had it
    assert provenance.recipe["model"]["norm"] == "group_ws" and read_recipe(before_the_move) == provenance.recipe
    assert provenance.made({**provenance.as_record(), "recipe": before_the_move})


def test_the_from_scratch_upper_bound_trains_pmps_model_on_full_masks(data_root: Path, tmp_path: Path) -> None:
    rows = plan_rows(STANDARD, "standard", ["voc454"], ["full", "full-scratch", "pmp"], None, data_root, tmp_path)
    full, scratch, pmp = rows
    assert scratch.name == "full-scratch-full" and scratch.json_path.name == "full-scratch-full.json"
    recipes = [row.recipe(tmp_path) for row in (full, scratch, pmp)]
    assert recipes[1].method == "full" and recipes[1].model == recipes[2].model != recipes[0].model
    assert recipes[1].model.norm == "group_ws" and not recipes[1].model.pretrained
    assert recipes[1].train == recipes[2].train and recipes[1].augment == recipes[2].augment
    assert scratch.provenance(tmp_path) != full.provenance(tmp_path)


def test_box_centre_rows_share_voc454_under_the_pmp_point_protocol(data_root: Path, tmp_path: Path) -> None:
    rows = plan_rows(STANDARD, "standard", ["voc454-box-centres"], ["full", "pce", "pmp"], None, data_root, tmp_path)
    assert [r.name for r in rows] == ["full-full", "pce-points", "pmp-points"]
    voc454 = plan_rows(STANDARD, "standard", ["voc454"], ["pce"], ["points"], data_root, tmp_path)[0]
    assert rows[1].recipe(tmp_path).data.root == voc454.recipe(tmp_path).data.root
    assert rows[1].recipe(tmp_path).data.labels != voc454.recipe(tmp_path).data.labels
    assert rows[1].provenance(tmp_path).labels["protocol"]["points_mode"] == "box-centres"
    assert rows[1].json_path.parent.name == "voc454-box-centres"


def test_mixed_rows_need_a_mixed_recipe(data_root: Path, tmp_path: Path) -> None:
    rows = plan_rows(STANDARD, "standard", ["voc454"], ["pce", "spml"], ["mixed"], data_root, tmp_path)
    assert [r.name for r in rows] == ["spml-mixed"]  # pce has no mixed recipe
    assert rows[0].recipe(tmp_path).data.labels.endswith("/mixed")


def _recorded_rows() -> list[Path]:
    return sorted((RECORDED / "standard").glob("*/*.json"))


# Rows made before a change their recipe now shows, marked `older` in docs/benchmarks.md until rerun; a row leaves
# its list when it is rerun. Issue 27: the CAM stage's new defaults (learning rates, background threshold and band).
# Issue 28: SPML's final classifier and relabelling, rloss's weight in the reference's units and from step 0.
OLDER_ROWS = {
    "voc454": {
        *(f"{name}{seed}" for name in ("hfpl-tags", "seam-tags", "ppc-tags", "ppc-hfpl-tags", "cam-boxes",
                                       "hfpl-boxes") for seed in ("", "-seed1", "-seed2")),
        "cam-tags-seed1", "cam-tags-seed2", "spml-tags", "spml-boxes", "spml-mixed",  # issue 27
        "rloss-points", "spml-points",  # issue 28
    },
    "camvid": {"spml-points", "spml-scribbles", "rloss-points", "rloss-scribbles"},  # issue 28
}  # fmt: skip


@needs_voc454
@pytest.mark.parametrize("path", _recorded_rows(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recorded_row_is_current_but_the_older_ones(tmp_path: Path, path: Path) -> None:
    record = json.loads(path.read_text())
    dataset = STANDARD.dataset(record["dataset"])
    row = Row(STANDARD, "standard", dataset, record["method"], record["supervision"], SHARED_DATA, RECORDED,
              record["seed"])  # fmt: skip
    assert row.json_path == path
    older = path.stem in OLDER_ROWS.get(path.parent.name, set())
    assert row.is_current(tmp_path) != older
