"""Recipes: validation of keys and types, inheritance, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from weakseg.config import RECIPE_DIR, apply_overrides, load_recipe_dict, upgrade_recipe_dict
from weakseg.engine.recipe import Recipe, load_recipe
from weakseg.errors import ConfigError

ROOT = ["data.root=/data"]


def test_builtin_recipes_all_load() -> None:
    names = [p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_")]
    assert {"full", "pce-points", "pce-scribbles", "demo"} <= set(names)
    for name in names:
        assert isinstance(load_recipe(name, ROOT), Recipe)


def test_inheritance_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text("base: pce-points\ntrain:\n  steps: 7\nmethod_args:\n  point_radius: 5\n")
    recipe = load_recipe(tmp_path / "child.yaml", [*ROOT, "train.lr=0.5", "augment.scale_range=[0.9, 1.1]"])
    assert recipe.method == "pce" and recipe.supervision == "points"
    assert recipe.train.steps == 7 and recipe.train.lr == 0.5 and recipe.train.batch_size == 8
    assert recipe.augment.scale_range == (0.9, 1.1)
    assert recipe.method_args == {"point_radius": 5}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown key 'train.stepz' (did you mean 'train.steps'?)"),
        ("train.steps=abc", "'train.steps' must be an integer"),
        ("train.steps=1.5", "'train.steps' must be an integer"),
        ("model.pretrained=maybe", "'model.pretrained' must be true or false"),
        ("augment.scale_range=[1]", "'augment.scale_range' must have 2 items"),
        ("nonsense=1", "unknown key 'nonsense'"),
        ("train.optimizer=adam", "train.optimizer must be sgd or adamw"),
        ("train.norm=group", "train.norm must be batch, sync or frozen"),
        ("train", "must look like key.sub=value"),
    ],
)
def test_bad_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe("full", [*ROOT, override])
    assert message in str(info.value)


def test_missing_data_root() -> None:
    with pytest.raises(ConfigError, match="data.root is not set"):
        load_recipe("full")


def test_unknown_recipe_lists_builtins() -> None:
    with pytest.raises(ConfigError, match="recipe not found .*pce-points"):
        load_recipe("no-such-recipe", ROOT)


def test_recipe_files_use_safe_load(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("method: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="cannot parse recipe"):
        load_recipe_dict(evil)


def test_self_inheritance_is_detected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_recipe_dict(tmp_path / "a.yaml")


def test_overrides_do_not_mutate_their_input() -> None:
    data = {"train": {"steps": 1}}
    assert apply_overrides(data, ["train.steps=2"]) == {"train": {"steps": 2}}
    assert data == {"train": {"steps": 1}}


def test_a_moved_key_is_read_at_its_new_place() -> None:
    recipe = load_recipe("pmp-points", [*ROOT, "method_args.norm=batch"])  # where `norm` was before it moved
    assert recipe.model.norm == "batch" and "norm" not in recipe.method_args
    assert load_recipe("pmp-points", ROOT).model.norm == "group_ws"
    assert upgrade_recipe_dict({"method": "pmp", "method_args": {"norm": "batch"}}) == {
        "method": "pmp", "method_args": {}, "model": {"norm": "batch"},
    }  # fmt: skip
    assert load_recipe("pce-points", [*ROOT, "method_args.norm=batch"]).method_args["norm"] == "batch"  # not pmp's
