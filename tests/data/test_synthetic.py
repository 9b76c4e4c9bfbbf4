"""The procedurally generated shapes dataset: layout, content, class set and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data.classes import get_class_set
from weakseg.data.synthetic import SHAPES_CLASSES, generate_shapes_dataset

SIZE = (64, 96)  # (height, width), deliberately not square


def read_split(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def read_pair(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(root / "JPEGImages" / f"{image_id}.png") as img:
        assert img.mode == "RGB"
        image = np.array(img)
    with Image.open(root / "SegmentationClass" / f"{image_id}.png") as lab:
        assert lab.mode == "P"
        return image, np.array(lab)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    assert generate_shapes_dataset(out, num_train=12, num_val=4, image_size=SIZE, seed=3) == out
    return out


def test_layout_and_files_read_back(root: Path) -> None:
    train, val = read_split(root, "train"), read_split(root, "val")
    assert len(train) == 12 and len(val) == 4 and not set(train) & set(val)
    assert sorted(p.stem for p in (root / "JPEGImages").glob("*.png")) == sorted(train + val)
    assert sorted(p.stem for p in (root / "SegmentationClass").glob("*.png")) == sorted(train + val)
    for image_id in train + val:
        image, mask = read_pair(root, image_id)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == SIZE
        assert mask.max() < SHAPES_CLASSES.num_classes  # no ignore pixels
        assert 1 <= len(np.unique(mask[mask > 0])) <= 3


def test_mask_palette_is_the_class_palette(root: Path) -> None:
    with Image.open(root / "SegmentationClass" / f"{read_split(root, 'train')[0]}.png") as lab:
        palette = np.array(lab.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(palette[: SHAPES_CLASSES.num_classes], SHAPES_CLASSES.palette)


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_class_appears(root: Path, split: str) -> None:
    masks = np.stack([read_pair(root, i)[1] for i in read_split(root, split)])
    assert set(np.unique(masks).tolist()) == set(range(SHAPES_CLASSES.num_classes))


def test_images_are_textured(root: Path) -> None:
    """Neither the background nor the objects are flat colours, and objects differ from the background."""
    for image_id in read_split(root, "train"):
        image, mask = read_pair(root, image_id)
        pixels = image.astype(float)
        background = pixels[mask == 0]
        assert background.std(axis=0).max() > 3
        for cls in np.unique(mask[mask > 0]):
            inside = pixels[mask == cls]
            if len(inside) >= 30:
                assert inside.std(axis=0).max() > 10


def test_class_set_loads(root: Path) -> None:
    loaded = get_class_set(root / "classes.yaml")
    assert loaded == SHAPES_CLASSES
    assert loaded.names == ("background", "disc", "square", "triangle", "ring") and loaded.background == 0


def test_deterministic_for_seed(root: Path, tmp_path: Path) -> None:
    again = generate_shapes_dataset(tmp_path / "again", num_train=12, num_val=4, image_size=SIZE, seed=3)
    other = generate_shapes_dataset(tmp_path / "other", num_train=12, num_val=4, image_size=SIZE, seed=4)
    assert read_split(again, "train") == read_split(root, "train")
    differs = False
    for image_id in read_split(root, "train") + read_split(root, "val"):
        image, mask = read_pair(root, image_id)
        for a, b in zip(read_pair(again, image_id), (image, mask), strict=True):
            np.testing.assert_array_equal(a, b)
        differs |= not np.array_equal(read_pair(other, image_id)[0], image)
    assert differs
    assert (again / "classes.yaml").read_text() == (root / "classes.yaml").read_text()
