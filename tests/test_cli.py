"""The ``weakseg`` command end to end on a tiny generated dataset, and one clean error line for every bad input.

Every bad-input case copies the fixture dataset (images, masks, split lists, classes.yaml and derived weak labels
under ``weak/``), breaks one file and checks that the command exits with status 2 and prints a single line
``weakseg: error: <file or key>: <problem>`` without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.cli import main
from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.synthetic import SHAPES_CLASSES, generate_shapes_dataset
from weakseg.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src"
K = SHAPES_CLASSES.num_classes
TRAIN_IDS = [f"shape_{i:04d}" for i in range(6)]
VAL_IDS = [f"shape_{i:04d}" for i in range(6, 9)]


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 train + 3 val 64×64 images with masks, classes.yaml and derived points + scribbles in ``weak/``."""
    root = generate_shapes_dataset(
        tmp_path_factory.mktemp("cli") / "shapes", num_train=6, num_val=3, image_size=(64, 64)
    )
    assert main(["derive-labels", str(root), "--out", str(root / "weak"), "--kinds", "points", "scribbles", "-q"]) == 0
    return root


@pytest.fixture
def broken(shapes_root: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture dataset, to break one file of."""
    return Path(shutil.copytree(shapes_root, tmp_path / "shapes"))


def train_argv(root: Path, out: Path, *extra: str, recipe: str = "pce-points") -> list[str]:
    return [
        "train",
        recipe,
        f"data.root={root}",
        "data.classes=classes.yaml",
        "data.labels=weak",
        f"output_dir={out}",
        "train.steps=2",
        "train.batch_size=2",
        "augment.crop_size=64",
        "data.num_workers=0",
        "model.pretrained=false",
        "train.ckpt_every=1",
        *extra,
        "-q",
    ]


def user_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``argv``, expect exit status 2 and exactly one stderr line ``weakseg: error: ...``; return the message."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("weakseg: error: ")
    return lines[0].removeprefix("weakseg: error: ")


def read_points(root: Path) -> dict:
    return json.loads((root / "weak" / "points.json").read_text())


def write_points(root: Path, points: dict) -> None:
    (root / "weak" / "points.json").write_text(json.dumps(points))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------ happy path


@pytest.fixture(scope="module")
def trained(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "pce"
    assert main(train_argv(shapes_root, out)) == 0
    return out


def test_derive_labels_prints_density_and_writes_files(shapes_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "labels"
    assert main(["derive-labels", str(shapes_root), "--out", str(out), "--kinds", "points", "scribbles"]) == 0
    stdout = capsys.readouterr().out
    assert "points: labelled-pixel density 0.0" in stdout
    assert "scribbles: labelled-pixel density 0." in stdout
    assert "wrote points, scribbles for 6 images" in stdout
    points = json.loads((out / "points.json").read_text())
    assert sorted(points) == TRAIN_IDS
    assert all(0 <= c < K for pts in points.values() for _, _, c in pts)
    assert sorted(p.stem for p in (out / "scribbles").glob("*.png")) == TRAIN_IDS
    assert (out / "protocol.json").is_file()


def test_derive_labels_uses_the_datasets_own_class_file(shapes_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    assert main(["derive-labels", str(shapes_root), "--out", str(out), "--kinds", "boxes", "-q"]) == 0
    assert json.loads((out / "protocol.json").read_text())["class_set"] == "shapes"
    categories = json.loads((out / "boxes_coco.json").read_text())["categories"]
    assert [c["name"] for c in categories] == list(SHAPES_CLASSES.names)


def test_derive_labels_with_a_recipe_file_uses_its_class_file(shapes_root: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "shapes.yaml"
    recipe.write_text("base: pce-points\ndata:\n  classes: classes.yaml\n")
    out = tmp_path / "labels"
    argv = ["derive-labels", str(shapes_root), "--recipe", str(recipe), "--out", str(out), "--kinds", "boxes", "-q"]
    assert main(argv) == 0
    assert json.loads((out / "protocol.json").read_text())["class_set"] == "shapes"


def test_derive_labels_without_root_is_a_clean_error(tmp_path: Path, capsys) -> None:
    message = user_error(capsys, ["derive-labels", "--out", str(tmp_path / "x")])
    assert "dataset root" in message


@pytest.mark.slow
def test_train_writes_checkpoints_metrics_and_recipe(trained: Path) -> None:
    for name in ("last.pt", "best.pt", "metrics.json", "recipe.yaml"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["step"] == 2
    assert 0.0 <= metrics["miou"] <= 1.0
    assert "pce" in (trained / "recipe.yaml").read_text()


@pytest.mark.slow
def test_eval_writes_metrics(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.json"
    assert main(["eval", str(trained / "last.pt"), "--out", str(out), "-q"]) == 0
    metrics = json.loads(out.read_text())
    for key in ("miou", "boundary_f", "jf"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_images"] == len(VAL_IDS)
    assert metrics["class_names"] == list(SHAPES_CLASSES.names)
    assert "miou" in capsys.readouterr().out


def test_predict_writes_palette_pngs_and_overlays(trained: Path, shapes_root: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "val_images"
    images.mkdir()
    for image_id in VAL_IDS:
        shutil.copy(shapes_root / "JPEGImages" / f"{image_id}.png", images)
    out = tmp_path / "pred"
    assert main(["predict", str(trained / "best.pt"), str(images), "--out", str(out), "-q"]) == 0
    assert f"wrote {len(VAL_IDS)} label maps" in capsys.readouterr().out
    for image_id in VAL_IDS:
        with Image.open(out / f"{image_id}.png") as label:
            assert label.mode == "P" and label.size == (64, 64)
            assert np.asarray(label).max() < K
        with Image.open(out / f"{image_id}_overlay.jpg") as overlay:
            assert overlay.format == "JPEG" and overlay.size == (64, 64)


# ------------------------------------------------------------------------------------ recipe mistakes


def test_unknown_recipe_key_suggests_the_right_one(shapes_root: Path, tmp_path: Path, capsys) -> None:
    message = user_error(capsys, train_argv(shapes_root, tmp_path / "run", "train.stepz=3"))
    assert "unknown key 'train.stepz'" in message and "did you mean 'train.steps'" in message


def test_wrong_value_type_names_the_key(shapes_root: Path, tmp_path: Path, capsys) -> None:
    message = user_error(capsys, train_argv(shapes_root, tmp_path / "run", "train.steps=abc"))
    assert "'train.steps' must be an integer" in message and "abc" in message


def test_until_names_the_method_s_stages(shapes_root: Path, tmp_path: Path, capsys) -> None:
    message = user_error(capsys, [*train_argv(shapes_root, tmp_path / "run"), "--until", "pseudo"])
    assert "--until pseudo: method 'pce' has stages train" in message


def test_missing_recipe_lists_builtin_ones(tmp_path: Path, capsys) -> None:
    message = user_error(capsys, ["train", "no-such-recipe", f"data.root={tmp_path}"])
    assert "no-such-recipe: recipe not found" in message and "pce-points" in message


def test_override_without_equals_sign(tmp_path: Path, capsys) -> None:
    message = user_error(capsys, ["train", "pce-points", f"data.root={tmp_path}", "train.steps"])
    assert "override 'train.steps' must look like key.sub=value" in message


def test_unparsable_recipe_file(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("train:\n  steps: [1, 2\n")
    message = user_error(capsys, ["train", str(recipe)])
    assert message.startswith(f"{recipe}: cannot parse recipe")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["override", "recipe-file"])
def test_scientific_notation_learning_rate_is_accepted(shapes_root: Path, tmp_path: Path, where: str) -> None:
    if where == "override":
        argv = train_argv(shapes_root, tmp_path / "run", "train.lr=1e-3")
    else:
        recipe = tmp_path / "sci.yaml"
        recipe.write_text("base: pce-points\ntrain:\n  lr: 1e-3\n")
        argv = train_argv(shapes_root, tmp_path / "run", recipe=str(recipe))
    assert main(argv) == 0
    assert "lr: 0.001" in (tmp_path / "run" / "recipe.yaml").read_text()


def test_date_like_output_dir_is_a_string(shapes_root: Path) -> None:
    from weakseg.engine.recipe import load_recipe

    recipe = load_recipe("pce-points", [f"data.root={shapes_root}", "output_dir=2024-05-01"])
    assert recipe.output_dir == "2024-05-01"


# --------------------------------------------------------------------------------------- data mistakes


def test_image_listed_but_missing(broken: Path, tmp_path: Path, capsys) -> None:
    split = broken / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + "shape_9999\n")
    message = user_error(capsys, train_argv(broken, tmp_path / "run"))
    assert str(split) in message and "'shape_9999' listed but not found" in message


def test_truncated_image(broken: Path, tmp_path: Path, capsys) -> None:
    image = broken / "JPEGImages" / "shape_0001.png"
    truncate(image)
    message = user_error(capsys, train_argv(broken, tmp_path / "run"))
    assert message.startswith(f"{image}: ")
    assert "image" in message.removeprefix(f"{image}: ")


def test_mask_of_the_wrong_size(broken: Path, tmp_path: Path, capsys) -> None:
    mask = broken / "SegmentationClass" / "shape_0007.png"  # a val mask: pce-points validates val masks
    Image.fromarray(np.zeros((32, 48), dtype=np.uint8)).save(mask)
    message = user_error(capsys, train_argv(broken, tmp_path / "run"))
    assert message == f"{mask}: mask is 48×32 but its image is 64×64"


def test_mask_of_the_wrong_size_in_a_fully_supervised_train_split(broken: Path, tmp_path: Path, capsys) -> None:
    mask = broken / "SegmentationClass" / "shape_0002.png"
    Image.fromarray(np.zeros((64, 63), dtype=np.uint8)).save(mask)
    message = user_error(capsys, train_argv(broken, tmp_path / "run", recipe="full"))
    assert message.startswith(f"{mask}: mask is 63×64")


def test_mask_class_id_outside_the_class_set(broken: Path, tmp_path: Path, capsys) -> None:
    mask = broken / "SegmentationClass" / "shape_0006.png"
    label = np.zeros((64, 64), dtype=np.uint8)
    label[10:20, 10:20] = 7
    Image.fromarray(label).save(mask)
    message = user_error(capsys, train_argv(broken, tmp_path / "run"))
    assert message.startswith(f"{mask}: ") and "class ids 7 outside 0..4" in message


def test_point_outside_the_image(broken: Path, tmp_path: Path, capsys) -> None:
    points = read_points(broken)
    points["shape_0000"].append([100, 5, 1])
    write_points(broken, points)
    message = user_error(capsys, train_argv(broken, tmp_path / "run"))
    assert "shape_0000" in message and "point (100.0, 5.0) lies outside the 64×64 image" in message


def test_point_outside_the_image_names_the_points_file(broken: Path, tmp_path: Path, capsys) -> None:
    points = read_points(broken)
    points["shape_0000"].append([100, 5, 1])
    write_points(broken, points)
    message = user_error(capsys, train_argv(broken, tmp_path / "run"))
    assert "points.json" in message


def test_box_with_no_area_in_a_coco_file(broken: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "shape_0000.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 12, 0, 5]}],
    }
    (broken / "boxes.json").write_text(json.dumps(coco))
    cfg = voc_layout(broken, classes="classes.yaml", boxes="boxes.json")
    with pytest.raises(DataError, match=r"box \[10, 12, 10, 17\] has no area"):
        SegmentationDataset(cfg, "train", kinds=("boxes",))


def test_image_with_an_empty_points_list(broken: Path, tmp_path: Path, capsys) -> None:
    points = read_points(broken)
    points["shape_0003"] = []
    write_points(broken, points)
    message = user_error(capsys, train_argv(broken, tmp_path / "run"))
    assert "image 'shape_0003' has no points labels" in message


@pytest.mark.slow
def test_skip_bad_skips_and_summarises_then_trains(broken: Path, tmp_path: Path, caplog) -> None:
    truncate(broken / "JPEGImages" / "shape_0001.png")
    points = read_points(broken)
    points["shape_0002"].append([100, 5, 1])
    points["shape_0003"] = []
    write_points(broken, points)
    Image.fromarray(np.zeros((32, 48), dtype=np.uint8)).save(broken / "SegmentationClass" / "shape_0007.png")
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main(train_argv(broken, out, "data.skip_bad=true")) == 0
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "skipped 3 bad sample(s) of split 'train'" in warnings
    assert "skipped 1 bad sample(s) of split 'val'" in warnings
    for culprit in ("shape_0001.png", "shape_0002", "shape_0003", "shape_0007.png"):
        assert culprit in warnings, culprit
    assert (out / "last.pt").is_file()
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 2


def test_skip_bad_also_skips_a_listed_but_missing_image(broken: Path, tmp_path: Path) -> None:
    split = broken / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + "shape_9999\n")
    cfg = voc_layout(broken, classes="classes.yaml", labels="weak", skip_bad=True)
    dataset = SegmentationDataset(cfg, "train", kinds=("points",), required=("points",))
    assert len(dataset) == len(TRAIN_IDS)


def test_unvalidated_bad_image_is_a_clean_error_with_no_workers(broken: Path, tmp_path: Path, capsys) -> None:
    image = broken / "JPEGImages" / "shape_0001.png"
    truncate(image)
    argv = train_argv(broken, tmp_path / "run", "data.validate=false", "train.steps=4")
    message = user_error(capsys, argv)
    assert message.startswith(f"{image}: unreadable image")


def test_unvalidated_bad_image_is_a_clean_error_with_workers(broken: Path, tmp_path: Path, capsys) -> None:
    image = broken / "JPEGImages" / "shape_0001.png"
    truncate(image)
    argv = train_argv(broken, tmp_path / "run", "data.validate=false", "train.steps=4", "data.num_workers=1")
    try:
        message = user_error(capsys, argv)
    except RuntimeError as exc:  # what happens today: torch's re-raise escapes main()
        pytest.fail(f"escaped main(): {str(exc).splitlines()[0]}")
    assert message.startswith(f"{image}: unreadable image")


# ---------------------------------------------------------------------------- checkpoints and outputs


@pytest.mark.slow
@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_checkpoint_passed_to_eval(trained: Path, tmp_path: Path, capsys, how: str) -> None:
    bad = tmp_path / "bad.pt"
    if how == "garbage":
        bad.write_bytes(b"\x00not a checkpoint" * 10)
    else:
        shutil.copy(trained / "last.pt", bad)
        truncate(bad)
    message = user_error(capsys, ["eval", str(bad), "-q"])
    assert message.startswith(f"{bad}: ") and "corrupt" in message


def test_missing_checkpoint_passed_to_predict(tmp_path: Path, capsys) -> None:
    message = user_error(capsys, ["predict", str(tmp_path / "none.pt"), str(tmp_path), "--out", str(tmp_path / "o")])
    assert "none.pt: checkpoint not found" in message


def test_unwritable_output_dir_fails_before_training(shapes_root: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    message = user_error(capsys, train_argv(shapes_root, blocker / "sub"))
    assert message.startswith(f"{blocker / 'sub'}: output folder is not writable")
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------------------------- a real process


@pytest.mark.slow
def test_user_error_in_a_subprocess_is_one_line_exit_2(broken: Path, tmp_path: Path) -> None:
    split = broken / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + "shape_9999\n")
    argv = train_argv(broken, tmp_path / "run")[:-1]  # not quiet: info logs must not get in the way either
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "weakseg.cli", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("weakseg: error: ") and "shape_9999" in lines[0]
    assert proc.stdout == ""
