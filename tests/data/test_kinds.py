"""The registries of per-pixel maps and label kinds: what is registered, and that a new map or a new label kind
flows from disk through augmentation to the batch by one registration, without touching the data layer."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import weakseg.pseudo  # noqa: F401 (registers the maps "regions" and "blots", as training and evaluation do)
from weakseg.data.classes import IGNORE_INDEX
from weakseg.data.dataset import SegmentationDataset, voc_layout
from weakseg.data.formats import write_label_png
from weakseg.data.kinds import KINDS, MapKind, register_kind, weak_kinds
from weakseg.data.loader import collate, sample_to_tensors
from weakseg.data.sample import LABEL_KINDS, MAP_FILLS, Sample, register_map
from weakseg.data.transforms import AugmentConfig, JointTransform
from weakseg.errors import DataError


@pytest.fixture
def registries() -> Iterator[None]:
    """Maps and kinds a test registers are forgotten after it."""
    maps, kinds = dict(MAP_FILLS), dict(KINDS)
    yield
    MAP_FILLS.clear()
    MAP_FILLS.update(maps)
    KINDS.clear()
    KINDS.update(kinds)


def test_the_built_in_kinds_and_maps() -> None:
    assert list(KINDS) == ["mask", *LABEL_KINDS]
    assert tuple(name for name, kind in KINDS.items() if kind.weak) == LABEL_KINDS
    assert MAP_FILLS == {"mask": IGNORE_INDEX, "scribble": IGNORE_INDEX, "regions": -1, "blots": IGNORE_INDEX}
    with pytest.raises(ValueError, match=re.escape("maps ['depth'] are not registered")):
        Sample("x", np.zeros((2, 2, 3), np.uint8), {"depth": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="registered with fill 255, not 0"):
        register_map("mask", 0)


def test_a_bare_sample_gets_every_registered_map_filled() -> None:
    item = sample_to_tensors(Sample("x", np.zeros((4, 5, 3), np.uint8)), num_classes=3)
    keys = ("image_id", "image", "mask", "scribble", "regions", "blots", "points", "boxes", "tags", "valid", "has")
    assert set(item) == set(keys)
    for name, fill in (("mask", 255), ("scribble", 255), ("regions", -1), ("blots", 255)):
        assert item[name].dtype == torch.int64 and item[name].shape == (4, 5) and (item[name] == fill).all()
    assert item["has"] == {"mask": False, "tags": False, "boxes": False, "points": False, "scribbles": False}


@pytest.mark.slow
@pytest.mark.parametrize("module", ["weakseg.engine.evaluator", "weakseg.engine.trainer"])
def test_engine_modules_register_the_maps_methods_derive(module: str) -> None:
    """Batches built wherever evaluation or training is imported carry ``regions`` and ``blots`` (filled)."""
    code = f"import {module}; from weakseg.data.sample import MAP_FILLS; print(sorted(MAP_FILLS.items()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[('blots', 255), ('mask', 255), ('regions', -1), ('scribble', 255)]\n"


def test_a_new_map_flows_through_transform_tensors_and_collate(registries: None) -> None:
    register_map("instances", 0)  # instance ids from 1, 0 = no instance
    image = np.full((20, 30, 3), 90, np.uint8)
    instances = np.arange(600, dtype=np.int32).reshape(20, 30) % 7 + 1
    transform = JointTransform(AugmentConfig(crop_size=40, scale_range=(1.0, 1.0), hflip=True, color_jitter=0.0))
    flipped = 0
    for seed in range(6):
        out = transform(Sample("a", image, {"instances": instances}), np.random.default_rng(seed))
        bare = transform(Sample("b", image), np.random.default_rng(seed))
        assert "instances" not in bare.maps
        x0, y0, x1, y1 = out.meta["valid"]
        real = out.maps["instances"][y0:y1, x0:x1]
        flipped += not np.array_equal(real, instances)
        assert np.array_equal(real, instances) or np.array_equal(real, instances[:, ::-1])
        padding = np.ones((40, 40), dtype=bool)
        padding[y0:y1, x0:x1] = False
        assert out.maps["instances"].dtype == np.int32 and (out.maps["instances"][padding] == 0).all()
        batch = collate([sample_to_tensors(s, num_classes=3) for s in (out, bare)])
        assert batch["instances"].dtype == torch.int64 and batch["instances"].shape == (2, 40, 40)
        assert torch.equal(batch["instances"][0], torch.from_numpy(out.maps["instances"]).long())
        assert (batch["instances"][1] == 0).all()
    assert 0 < flipped < 6


def _coarse(mask: np.ndarray) -> np.ndarray:
    """Coarse labels, as Cityscapes' gtCoarse: the mask with a band along every class boundary unlabelled."""
    uniform = ndimage.minimum_filter(mask, 5) == ndimage.maximum_filter(mask, 5)
    return np.where(uniform, mask, IGNORE_INDEX).astype(np.uint8)


def test_a_new_label_kind_is_read_validated_and_batched(shapes: Path, tmp_path: Path, registries: None) -> None:
    register_kind(MapKind(name="coarse", file="coarse", map="coarse", missing="coarse folder not found"))
    data = voc_layout(shapes, classes="classes.yaml", labels=str(tmp_path / "labels"))
    with pytest.raises(DataError, match="coarse folder not found"):
        SegmentationDataset(data, "train", kinds=("coarse",))
    masks = dict(SegmentationDataset(data, "train").masks())
    labelled, unlabelled = sorted(masks)[:2], sorted(masks)[2:]
    coarse = {image_id: _coarse(masks[image_id]) for image_id in labelled}
    for image_id, labels in coarse.items():
        write_label_png(tmp_path / "labels" / "coarse" / f"{image_id}.png", labels)

    dataset = SegmentationDataset(data, "train", kinds=("mask", "coarse"))
    samples = {sample.image_id: sample for sample in (dataset[i] for i in range(len(dataset)))}
    for image_id in labelled:
        np.testing.assert_array_equal(samples[image_id].maps["coarse"], coarse[image_id])
        assert weak_kinds(samples[image_id]) == ("coarse",)
    assert all(weak_kinds(samples[image_id]) == () for image_id in unlabelled)
    with pytest.raises(DataError, match=f"image '{unlabelled[0]}' has no coarse labels"):
        SegmentationDataset(data, "train", kinds=("coarse",), required=("coarse",))
    kept = SegmentationDataset(replace(data, skip_bad=True), "train", kinds=("coarse",), required=("coarse",))
    assert [record.image_id for record in kept.records] == labelled

    broken = coarse[labelled[1]].copy()
    broken[0, 0] = dataset.class_set.num_classes  # a class id outside the class set
    Image.fromarray(broken).save(tmp_path / "labels" / "coarse" / f"{labelled[1]}.png")
    with pytest.raises(DataError, match=re.escape(f"coarse/{labelled[1]}.png")):
        SegmentationDataset(data, "train", kinds=("coarse",))

    transform = JointTransform(AugmentConfig(crop_size=80, scale_range=(1.0, 1.0), hflip=False, color_jitter=0.0))
    items = [samples[labelled[0]], samples[unlabelled[0]]]
    k = dataset.class_set.num_classes
    batch = collate([sample_to_tensors(transform(s, np.random.default_rng(0)), k) for s in items])
    assert batch["has"]["coarse"].tolist() == [True, False] and batch["has"]["mask"].tolist() == [True, True]
    assert torch.equal(batch["coarse"][0, :64, :64], torch.from_numpy(coarse[labelled[0]]).long())
    assert (batch["coarse"][0, 64:] == IGNORE_INDEX).all() and (batch["coarse"][0, :, 64:] == IGNORE_INDEX).all()
    assert (batch["coarse"][1] == IGNORE_INDEX).all()
