"""Whole datasets with bad samples, and ``weakseg derive-labels`` on them.

A tiny generated dataset (VOC layout, with derived tags, boxes, points and scribbles in ``labels/``) is copied and
damaged. Opening it must fail with a DataError naming the damaged file, or, with ``skip_bad``, skip exactly the
damaged samples and report each one; the samples kept must read exactly as before. ``derive-labels`` must exit with
status 2 and one line naming the file, having written nothing.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from weakseg.cli import main
from weakseg.data.dataset import DataConfig, SegmentationDataset, resolve_class_set, voc_layout
from weakseg.data.formats import read_label_map, read_points_json, read_tags_json
from weakseg.data.sample import LABEL_KINDS, Sample
from weakseg.data.simulate import LabelProtocol, derive_labels, mix_labels
from weakseg.data.synthetic import SHAPES_CLASSES, generate_shapes_dataset
from weakseg.errors import ConfigError, DataError

IDS = [f"shape_{i:04d}" for i in range(5)]
K = SHAPES_CLASSES.num_classes
KINDS = ("mask", *LABEL_KINDS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 train + 1 val 32×32 images with masks and every weak-label kind derived into ``labels/``."""
    root = generate_shapes_dataset(tmp_path_factory.mktemp("tiny"), num_train=5, num_val=1, image_size=(32, 32))
    data = voc_layout(root, classes="classes.yaml")
    masks = SegmentationDataset(data, "train").masks()
    derive_labels(masks, resolve_class_set(data), root / "labels", LABEL_KINDS, LabelProtocol(min_component_area=4))
    return root


def config(root: Path, **overrides: object) -> DataConfig:
    return voc_layout(root, classes="classes.yaml", labels=str(root / "labels"), **overrides)


@pytest.fixture(scope="module")
def originals(tiny: Path) -> dict[str, Sample]:
    """Every sample of the undamaged dataset, by image id."""
    dataset = SegmentationDataset(config(tiny), "train", kinds=KINDS)
    return {sample.image_id: sample for sample in (dataset[i] for i in range(len(dataset)))}


# ------------------------------------------------------------------------------------------- corruptions
# Each breaks one sample of a dataset copy and returns the strings an error about it must hold (None: harmless).


def _image(root: Path, image_id: str) -> Path:
    return root / "JPEGImages" / f"{image_id}.png"


def _mask(root: Path, image_id: str) -> Path:
    return root / "SegmentationClass" / f"{image_id}.png"


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _write(path: Path, data: bytes) -> tuple[str]:
    path.write_bytes(data)
    return (f"{path.parent.name}/{path.name}",)


def _save(path: Path, array: np.ndarray, fmt: str = "PNG") -> tuple[str]:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return _write(path, buf.getvalue())


def _truncated(path: Path) -> tuple[str]:
    return _write(path, path.read_bytes()[: path.stat().st_size // 2])


def _missing_image(root: Path, image_id: str) -> tuple[str]:
    _image(root, image_id).unlink()
    return (f"'{image_id}' listed but not found",)


def _missing_mask(root: Path, image_id: str) -> tuple[str, ...]:
    _mask(root, image_id).unlink()
    return f"SegmentationClass/{image_id}.png", "file not found"


def _second_image(root: Path, image_id: str) -> tuple[str, ...]:
    shutil.copyfile(_image(root, image_id), _image(root, image_id).with_suffix(".jpg"))
    return f"{image_id}.jpg", f"{image_id}.png"


def _rgb_mask(root: Path, image_id: str) -> None:
    """Harmless: the mask as RGB class colours reads the same."""
    path = _mask(root, image_id)
    _save(path, SHAPES_CLASSES.palette_array()[read_label_map(path)])


def _unknown_colour(root: Path, image_id: str) -> tuple[str]:
    rgb = SHAPES_CLASSES.palette_array()[read_label_map(_mask(root, image_id))]
    rgb[3, 4] = (1, 2, 3)
    return _save(_mask(root, image_id), rgb)


def _class_out_of_range(root: Path, image_id: str) -> tuple[str]:
    label = read_label_map(_mask(root, image_id))
    label[0, 0] = K + 2
    return _save(_mask(root, image_id), label)


def _point_off_the_image(root: Path, image_id: str) -> tuple[str, ...]:
    _edit_json(root / "labels" / "points.json", lambda points: points[image_id].append([40, 5, 1]))
    return "points.json", f"image {image_id}"


def _tag_out_of_range(root: Path, image_id: str) -> tuple[str, ...]:
    _edit_json(root / "labels" / "tags.json", lambda tags: tags.__setitem__(image_id, [K + 3]))
    return "tags.json", f"image {image_id}"


def _box_of_negative_width(root: Path, image_id: str) -> tuple[str, ...]:
    def edit(coco: dict) -> None:
        number = next(image["id"] for image in coco["images"] if image["file_name"] == f"{image_id}.jpg")
        coco["annotations"].append({"id": 999, "image_id": number, "category_id": 1, "bbox": [5, 5, -2, 4]})

    _edit_json(root / "labels" / "boxes_coco.json", edit)
    return "boxes_coco.json", f"image {image_id}"


CORRUPTIONS: dict[str, Callable[[Path, str], tuple[str, ...] | None]] = {
    "image truncated": lambda root, i: _truncated(_image(root, i)),
    "image of zero bytes": lambda root, i: _write(_image(root, i), b""),
    "image is text": lambda root, i: _write(_image(root, i), b"this is not an image\n"),
    "image missing": _missing_image,
    "image id names two files": _second_image,
    "mask truncated": lambda root, i: _truncated(_mask(root, i)),
    "mask missing": _missing_mask,
    "mask of the wrong size": lambda root, i: _save(_mask(root, i), np.zeros((16, 32), np.uint8)),
    "mask of 16-bit values over 255": lambda root, i: _save(_mask(root, i), np.full((32, 32), 300, np.uint16)),
    "mask as a float TIFF": lambda root, i: _save(_mask(root, i), np.zeros((32, 32), np.float32), "TIFF"),
    "mask with an unknown colour": _unknown_colour,
    "mask with a class id out of range": _class_out_of_range,
    "mask as RGB class colours (harmless)": _rgb_mask,
    "scribble of the wrong size": lambda root, i: _save(
        root / "labels" / "scribbles" / f"{i}.png", np.zeros((8, 8), np.uint8)
    ),
    "point off the image": _point_off_the_image,
    "tag out of range": _tag_out_of_range,
    "box of negative width": _box_of_negative_width,
}
IMAGE_AND_MASK_FAULTS = [name for name in CORRUPTIONS if name.startswith(("image", "mask")) and "harmless" not in name]


def _names(message: str, tokens: tuple[str, ...]) -> bool:
    return all(token in message for token in tokens)


def check_damage(tiny: Path, originals: dict[str, Sample], damage: dict[str, str]) -> None:
    """Damage a copy of ``tiny`` ({image id: corruption}) and open it with and without ``skip_bad``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(tiny, Path(tmp) / "data"))
        found = {image_id: CORRUPTIONS[name](root, image_id) for image_id, name in damage.items()}
        bad = {image_id: tokens for image_id, tokens in found.items() if tokens is not None}
        good = [image_id for image_id in IDS if image_id not in bad]
        if bad:
            with pytest.raises(DataError) as info:
                SegmentationDataset(config(root), "train", kinds=KINDS)
            assert any(_names(str(info.value), tokens) for tokens in bad.values()), str(info.value)
        if not good:
            with pytest.raises(DataError, match="no usable images in split 'train'"):
                SegmentationDataset(config(root, skip_bad=True), "train", kinds=KINDS)
            return
        dataset = SegmentationDataset(config(root, skip_bad=True), "train", kinds=KINDS)
        assert [record.image_id for record in dataset.records] == good
        assert len(dataset.skipped) == len(bad)
        for tokens in bad.values():
            assert sum(_names(message, tokens) for message in dataset.skipped) == 1, (tokens, dataset.skipped)
        for index, image_id in enumerate(good):
            kept, before = dataset[index], originals[image_id]
            assert kept.image_id == image_id
            for kind in ("image", "tags", "boxes", "points"):
                np.testing.assert_array_equal(getattr(kept, kind), getattr(before, kind), err_msg=kind)
            for name in ("mask", "scribble"):
                np.testing.assert_array_equal(kept.maps.get(name), before.maps.get(name), err_msg=name)


@pytest.mark.parametrize("fault", list(CORRUPTIONS))
def test_each_fault_alone(tiny: Path, originals: dict[str, Sample], fault: str) -> None:
    check_damage(tiny, originals, {IDS[1]: fault})


@settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(IDS), st.sampled_from(sorted(CORRUPTIONS)), min_size=2, max_size=5))
@example(damage=dict.fromkeys(IDS, "image truncated"))
def test_faults_together_skip_exactly_the_bad_samples(
    tiny: Path, originals: dict[str, Sample], damage: dict[str, str]
) -> None:
    check_damage(tiny, originals, damage)


def test_folder_listing_ignores_hidden_files_and_refuses_unsafe_names(tiny: Path, tmp_path: Path) -> None:
    """Without a split list every image of the folder is a sample; macOS's ``._x.png`` files are not images."""
    root = Path(shutil.copytree(tiny, tmp_path / "data"))
    (root / "JPEGImages" / "._shape_0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    cfg = config(root, split_file=None, masks=None)
    assert len(SegmentationDataset(cfg, "train", kinds=())) == 6
    shutil.copyfile(_image(root, IDS[0]), root / "JPEGImages" / "bad\x01name.png")
    with pytest.raises(DataError, match=r"JPEGImages: file 'bad\\x01name\.png': image id 'bad\\x01name' is not a safe"):
        SegmentationDataset(cfg, "train", kinds=())
    cfg.skip_bad = True
    dataset = SegmentationDataset(cfg, "train", kinds=())
    assert len(dataset) == 6 and len(dataset.skipped) == 1 and "bad\\x01name" in dataset.skipped[0]


def test_unvalidated_dataset_still_names_an_unreadable_image(tiny: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny, tmp_path / "data"))
    _write(_image(root, IDS[1]), b"not an image")
    dataset = SegmentationDataset(config(root, validate=False), "train")
    with pytest.raises(DataError, match=rf"JPEGImages/{IDS[1]}\.png: not a recognised image file"):
        dataset.labelled_pixel_fraction("mask")


def test_a_data_path_with_unknown_braces_is_a_config_error(tiny: Path) -> None:
    with pytest.raises(ConfigError, match=r"data path 'JPEG\{x\}': only \{split\} may stand in braces"):
        SegmentationDataset(config(tiny, images="JPEG{x}"), "train")


# ----------------------------------------------------------------------------------------- derive-labels


def user_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``argv``: exit status 2 and exactly one stderr line ``weakseg: error: ...``; return the message."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("weakseg: error: "), lines
    return lines[0].removeprefix("weakseg: error: ")


def derive_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["derive-labels", str(root), "--out", str(out), "--kinds", "tags", "boxes", "points", "-q", *extra]


@pytest.mark.parametrize("fault", IMAGE_AND_MASK_FAULTS)
def test_derive_labels_names_the_bad_file_and_writes_nothing(tiny: Path, tmp_path: Path, capsys, fault: str) -> None:
    root = Path(shutil.copytree(tiny, tmp_path / "data"))
    tokens = CORRUPTIONS[fault](root, IDS[2])
    out = tmp_path / "out"
    message = user_error(capsys, derive_argv(root, out))
    assert _names(message, tokens), message
    assert not out.exists()


def _coco(file_name: str, bbox: list[float]) -> str:
    images = [{"id": 1, "file_name": file_name, "width": 32, "height": 32}]
    return json.dumps({"images": images, "annotations": [{"image_id": 1, "category_id": 1, "bbox": bbox}]})


BAD_INPUTS = {  # file to write (relative to the dataset root), its text, extra arguments, what the error says
    "split id climbing out": ("ImageSets/Segmentation/train.txt", "shape_0000\n../../x\n", [], "line 2: file name"),
    "split id with NUL": ("ImageSets/Segmentation/train.txt", "shape_0000\nx\x00y\n", [], "not a safe file name"),
    "boxes: malformed JSON": ("b.json", '{"images": [', ["--boxes", "{root}/b.json"], "b.json: malformed JSON"),
    "boxes: file name climbing out": (
        "b.json",
        _coco("../../shape_0000.png", [1, 1, 5, 5]),
        ["--boxes", "{root}/b.json"],
        "b.json: images[0]: file name '../../shape_0000.png' climbs out of its folder",
    ),
    "boxes: absolute file name": (
        "b.json",
        _coco("/etc/shape_0000.png", [1, 1, 5, 5]),
        ["--boxes", "{root}/b.json"],
        "is an absolute path",
    ),
    "boxes for no image of the split": (
        "b.json",
        _coco("other.png", [1, 1, 5, 5]),
        ["--boxes", "{root}/b.json"],
        "b.json: has boxes for none of the 5 images of split 'train'",
    ),
    "boxes: negative width": (
        "b.json",
        _coco("shape_0000.png", [5, 5, -3, 4]),
        ["--boxes", "{root}/b.json"],
        "b.json: image shape_0000: box [5, 5, 2, 9] has no area",
    ),
    "boxes: XML with an unknown class": (
        "xml/a.xml",
        "<annotation><filename>shape_0000.png</filename><object><name>unicorn</name></object></annotation>",
        ["--boxes", "{root}/xml"],
        "a.xml: object 0: unknown class name 'unicorn'",
    ),
    "boxes: XML file name climbing out": (
        "xml/a.xml",
        "<annotation><filename>..\\shape_0000.png</filename></annotation>",
        ["--boxes", "{root}/xml"],
        "a.xml: <filename>: file name '..\\\\shape_0000.png' climbs out of its folder",
    ),
    "class set with a bad palette": (
        "classes.yaml",
        "names: [bg, disc]\npalette: [[0, 0, 0], [300, 0, 0]]\n",
        [],
        "classes.yaml: 'palette' must be a list of [r, g, b] colours",
    ),
    "recipe with unknown braces": (
        "r.yaml",
        "base: pce-points\ndata:\n  classes: classes.yaml\n  images: 'JPEG{x}'\n",
        ["--recipe", "{root}/r.yaml"],
        "data path 'JPEG{x}': only {split} may stand in braces",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_derive_labels_refuses_bad_inputs(tiny: Path, tmp_path: Path, capsys, case: str) -> None:
    root = Path(shutil.copytree(tiny, tmp_path / "data"))
    name, text, extra, expected = BAD_INPUTS[case]
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    message = user_error(capsys, derive_argv(root, out, *(arg.format(root=root) for arg in extra)))
    assert expected in message, message
    assert not out.exists()


def test_derive_labels_skips_bad_masks_when_the_recipe_says_so(tiny: Path, tmp_path: Path, caplog) -> None:
    root = Path(shutil.copytree(tiny, tmp_path / "data"))
    bad = _mask(root, IDS[3])
    _truncated(bad)
    recipe = root / "r.yaml"
    recipe.write_text("base: pce-points\ndata:\n  classes: classes.yaml\n  skip_bad: true\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["derive-labels", str(root), "--recipe", str(recipe), "--out", str(out), "-q"]) == 0
    assert "skipped 1 bad sample(s)" in caplog.text and str(bad) in caplog.text
    kept = [image_id for image_id in IDS if image_id != IDS[3]]
    assert sorted(read_points_json(out / "points.json")) == kept == sorted(read_tags_json(out / "tags.json"))
    assert sorted(p.stem for p in (out / "scribbles").iterdir()) == kept


# -------------------------------------------------------------------------------------------- mix_labels


def test_mix_labels_refuses_damaged_label_files(tiny: Path, tmp_path: Path) -> None:
    labels = Path(shutil.copytree(tiny / "labels", tmp_path / "labels"))
    (labels / "scribbles" / "._shape_0000.png").write_bytes(b"AppleDouble")  # hidden: not a scribble
    assignment = mix_labels(labels, tmp_path / "mixed", LABEL_KINDS)
    assert sorted(assignment) == IDS
    (labels / "boxes_coco.json").write_text('{"images": 3, "annotations": []}')
    with pytest.raises(DataError, match=r"boxes_coco\.json: COCO file needs 'images' and 'annotations' lists"):
        mix_labels(labels, tmp_path / "again", LABEL_KINDS)
    shutil.copyfile(tiny / "labels" / "boxes_coco.json", labels / "boxes_coco.json")
    (labels / "points.json").write_text(json.dumps({"../../escape": [[1, 1, 1]]}))
    with pytest.raises(DataError, match=r"points\.json: image id '\.\./\.\./escape' is not a safe file name"):
        mix_labels(labels, tmp_path / "again", LABEL_KINDS)
    assert not (tmp_path / "again").exists()
