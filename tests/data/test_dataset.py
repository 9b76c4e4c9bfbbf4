"""Datasets on disk: the real sets in one line each, label kinds, requirements, validation and skipping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, needs_camvid, needs_voc454
from weakseg.data import camvid, voc, voc_layout
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.kinds import weak_kinds
from weakseg.errors import DataError


@needs_voc454
def test_voc454_in_one_line() -> None:
    train = voc(SHARED_DATA / "voc454", "train", kinds=("mask", "tags", "boxes"))
    val = voc(SHARED_DATA / "voc454", "val")
    assert (len(train), len(val)) == (212, 242)
    sample = train[0]
    assert sample.image.shape == (375, 500, 3) and sample.maps["mask"].shape == (375, 500)
    assert set(np.unique(sample.maps["mask"])) <= set(range(21)) | {255}
    assert sample.tags is not None and len(sample.tags) >= 1
    assert sample.boxes is not None and sample.boxes.shape[1] == 5


@needs_camvid
def test_camvid_in_one_line() -> None:
    train = camvid(SHARED_DATA / "camvid", "train", validate=False)
    val = camvid(SHARED_DATA / "camvid", "val", validate=False)
    assert (len(train), len(val)) == (367, 101)
    sample = val[0]
    assert sample.image.shape == (360, 480, 3)
    assert set(np.unique(sample.maps["mask"])) <= set(range(11)) | {255}


def _data(root: Path, **kw):
    return voc_layout(root, classes="classes.yaml", labels=str(root / "labels"), **kw)


def test_every_label_kind_loads(shapes: Path) -> None:
    ds = SegmentationDataset(_data(shapes), "train", kinds=("mask", "tags", "boxes", "points", "scribbles"))
    sample = ds[0]
    assert weak_kinds(sample) == ("tags", "boxes", "points", "scribbles")
    mask, scribble = sample.maps["mask"], sample.maps["scribble"]
    assert scribble.shape == mask.shape
    labelled = scribble != 255
    assert (scribble[labelled] == mask[labelled]).all()
    assert 0 < ds.labelled_pixel_fraction("scribbles") < ds.labelled_pixel_fraction("mask") == 1.0


def test_mixed_requirement_accepts_any_weak_kind(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    shutil.copytree(shapes, root)
    points = json.loads((root / "labels" / "points.json").read_text())
    first = sorted(points)[0]
    points[first] = []
    (root / "labels" / "points.json").write_text(json.dumps(points))
    (root / "labels" / "scribbles" / f"{sorted(points)[1]}.png").unlink()
    with pytest.raises(DataError, match=f"image '{first}' has no points labels"):
        SegmentationDataset(_data(root), "train", kinds=("points",), required=("points",))
    ds = SegmentationDataset(_data(root), "train", kinds=("points", "scribbles"), required=("any-weak",))
    assert len(ds) == 8
    skipping = SegmentationDataset(_data(root, skip_bad=True), "train", kinds=("points",), required=("points",))
    assert len(skipping) == 7 and len(skipping.skipped) == 1


def test_skip_bad_drops_a_truncated_image_and_reports_it(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(shapes, root)
    victim = sorted((root / "JPEGImages").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match=victim.name):
        SegmentationDataset(_data(root), "train")
    ds = SegmentationDataset(_data(root, skip_bad=True), "train")
    assert len(ds) == 7 and victim.name in ds.skipped[0]


def test_split_ids_cannot_escape_the_image_folder(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "ids"
    shutil.copytree(shapes, root)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("../../escape\n")
    with pytest.raises(DataError, match=r"train\.txt: line 1: file name '\.\./\.\./escape' climbs out of its folder"):
        SegmentationDataset(_data(root), "train")
