"""Weak-label simulation from full masks (``weakseg derive-labels``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from weakseg.data import formats
from weakseg.data.classes import CAMVID, VOC
from weakseg.data.kinds import weak_kinds
from weakseg.data.simulate import (
    LabelProtocol,
    derive_boxes,
    derive_labels,
    derive_points,
    derive_points_from_boxes,
    derive_scribbles,
    derive_tags,
    image_rng,
)
from weakseg.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
VOC454 = SHARED / "voc454"
EIGHT = np.ones((3, 3), dtype=bool)


def make_mask() -> np.ndarray:
    """60×80 VOC mask: two person boxes, an L-shaped dog, a too-small bird, two background components."""
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[5:20, 5:25] = 15
    mask[29:46, 49:71] = 255  # void border around the second person
    mask[30:45, 50:70] = 15
    mask[30:50, 5:13] = 12
    mask[42:50, 5:31] = 12
    mask[2:5, 70:73] = 3  # area 9 < min_component_area
    mask[:, 76] = 255  # cuts a 60×3 background strip off
    return mask


def random_masks(n: int, seed: int = 1) -> list[tuple[str, np.ndarray]]:
    """Blob masks with a few classes and some void, as (image_id, mask)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        mask = np.zeros((48, 64), dtype=np.uint8)
        for _ in range(3):
            r, c = rng.integers(4, 40), rng.integers(4, 56)
            h, w = rng.integers(8, 20, size=2)
            mask[r : r + h, c : c + w] = rng.integers(1, 21)
        mask[rng.random(mask.shape) < 0.01] = 255
        items.append((f"img_{i:03d}", mask))
    return items


def components(mask: np.ndarray, class_id: int) -> tuple[np.ndarray, int]:
    return ndimage.label(mask == class_id, structure=EIGHT)


# -------------------------------------------------------------------------------------------- protocol


def test_protocol_validation_and_description() -> None:
    with pytest.raises(ConfigError):
        LabelProtocol(points_mode="clicks")
    with pytest.raises(ConfigError):
        LabelProtocol(scribble_length_fraction=0)
    with pytest.raises(ConfigError):
        LabelProtocol(scribble_width=0)
    text = LabelProtocol().describe(["points"])
    assert text.startswith("points: 1 per connected component (distance-transform maximum) + background")
    assert text.endswith("seed 0, min area 16")
    assert "box centres" in LabelProtocol(points_mode="box-centres").describe(["points"])
    assert LabelProtocol(seed=3).to_dict()["seed"] == 3


# ----------------------------------------------------------------------------------------- tags, boxes


def test_tags_exclude_background_and_ignore() -> None:
    assert derive_tags(make_mask(), VOC).tolist() == [3, 12, 15]
    assert derive_tags(np.array([[0, 3], [255, 3]], np.uint8), CAMVID).tolist() == [0, 3]  # no background


def test_boxes_tight_on_components() -> None:
    boxes = derive_boxes(make_mask(), VOC, LabelProtocol())
    expected = {(5, 30, 31, 50, 12), (5, 5, 25, 20, 15), (50, 30, 70, 45, 15)}
    assert {tuple(int(v) for v in b) for b in boxes} == expected  # the 3×3 bird is below min area
    assert boxes.dtype == np.float32
    small = derive_boxes(make_mask(), VOC, LabelProtocol(min_component_area=1))
    assert [70, 2, 73, 5, 3] in small.tolist()


# ---------------------------------------------------------------------------------------------- points


def test_points_one_per_component_at_distance_maximum() -> None:
    mask = make_mask()
    points = derive_points(mask, VOC, LabelProtocol(), np.random.default_rng(0))
    assert sorted(points[:, 2].tolist()) == [0, 0, 12, 15, 15]
    seen = set()
    for x, y, cls in points:
        r, c = int(y), int(x)
        assert (r, c) == (y, x) and mask[r, c] == cls
        labels, _ = components(mask, int(cls))
        component = labels == labels[r, c]
        dist = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
        assert dist[r, c] == dist.max()
        seen.add((int(cls), int(labels[r, c])))
    assert len(seen) == len(points)  # never two points in one component


def test_points_background_options() -> None:
    mask = make_mask()
    rng = np.random.default_rng(0)
    no_bg = derive_points(mask, VOC, LabelProtocol(include_background=False), rng)
    assert 0 not in no_bg[:, 2]
    one_bg = derive_points(mask, VOC, LabelProtocol(background_points=1), rng)
    bg = one_bg[one_bg[:, 2] == 0]
    assert len(bg) == 1 and bg[0, 0] < 76  # the largest background component, not the strip
    camvid = derive_points(np.array([[0] * 6] * 6, np.uint8), CAMVID, LabelProtocol(), rng)
    assert camvid[:, 2].tolist() == [0]


def test_points_ties_broken_by_seed() -> None:
    mask = np.zeros((20, 60), np.uint8)
    mask[4:14, 5:55] = 7  # a long bar: many distance maxima
    picks = {tuple(derive_points(mask, VOC, LabelProtocol(), np.random.default_rng(s))[1, :2]) for s in range(8)}
    assert len(picks) > 1


def test_box_centre_points_pmp() -> None:
    mask = make_mask()
    boxes = derive_boxes(mask, VOC, LabelProtocol())
    points = derive_points_from_boxes(
        boxes, mask, VOC, LabelProtocol(points_mode="box-centres"), np.random.default_rng(0)
    )
    assert len(points) == len(boxes) * (1 + 4)
    centres, background = points[: len(boxes)], points[len(boxes) :]
    np.testing.assert_array_equal(centres[:, 2], boxes[:, 4])
    np.testing.assert_array_equal(centres[:, 0], np.floor((boxes[:, 0] + boxes[:, 2]) / 2))
    assert (background[:, 2] == 0).all()
    r, c = background[:, 1].astype(int), background[:, 0].astype(int)
    assert (mask[r, c] != 255).all()
    assert len(set(zip(r.tolist(), c.tolist(), strict=True))) == len(background)
    for x0, y0, x1, y1, _ in boxes:
        assert not ((c >= x0) & (c < x1) & (r >= y0) & (r < y1)).any()
    rng = np.random.default_rng(0)
    two = derive_points_from_boxes(boxes, mask, VOC, LabelProtocol(background_points=2), rng)
    assert len(two) == len(boxes) * 3


def test_box_centre_points_when_no_room() -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 255
    boxes = np.array([[0, 0, 4, 3, 5]], np.float32)  # leaves only row 3 (4 pixels) outside
    points = derive_points_from_boxes(boxes, mask, VOC, LabelProtocol(background_points=10), np.random.default_rng(0))
    assert len(points) == 1 + 4 and (points[1:, 1] == 3).all()


# ------------------------------------------------------------------------------------------- scribbles


def test_scribbles_inside_components_and_connected() -> None:
    mask = make_mask()
    scribble = derive_scribbles(mask, VOC, LabelProtocol(), np.random.default_rng(0))
    labelled = scribble != 255
    assert (mask[labelled] == scribble[labelled]).all()
    assert not (labelled & (mask == 255)).any()
    assert not (scribble == 3).any()  # too small
    for cls in (0, 12, 15):
        labels, n = components(mask, cls)
        for k in range(1, n + 1):
            stroke = (labels == k) & (scribble == cls)
            assert stroke.any()
            assert ndimage.label(stroke, structure=EIGHT)[1] == 1
    assert 0.01 < np.count_nonzero(scribble != 255) / np.count_nonzero(mask != 255) < 0.3


def test_scribble_density_monotone_in_length_fraction() -> None:
    mask = make_mask()
    maps = [
        derive_scribbles(mask, VOC, LabelProtocol(scribble_length_fraction=f), np.random.default_rng(5))
        for f in (0.2, 0.5, 1.0)
    ]
    counts = [(m != 255).sum() for m in maps]
    assert counts[0] < counts[1] < counts[2]
    assert ((maps[0] != 255) <= (maps[1] != 255)).all()  # same start, longer stretch
    thin = derive_scribbles(mask, VOC, LabelProtocol(scribble_width=1), np.random.default_rng(5))
    assert (thin != 255).sum() < counts[1]


def test_scribbles_without_background() -> None:
    protocol = LabelProtocol(include_background=False)
    scribble = derive_scribbles(make_mask(), VOC, protocol, np.random.default_rng(0))
    assert set(np.unique(scribble).tolist()) == {12, 15, 255}


# --------------------------------------------------------------------------------------- derive_labels


def _read_all(out: Path) -> tuple[dict, dict, dict, dict, dict]:
    scribbles = {p.stem: formats.read_label_map(p, num_classes=21) for p in (out / "scribbles").glob("*.png")}
    return (
        formats.read_tags_json(out / "tags.json"),
        formats.read_coco_boxes(out / "boxes_coco.json"),
        formats.read_points_json(out / "points.json"),
        scribbles,
        json.loads((out / "protocol.json").read_text()),
    )


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_derive_labels_writes_files_that_read_back(tmp_path: Path) -> None:
    items = [("one", make_mask()), *random_masks(3)]
    summary = derive_labels(
        items, VOC, tmp_path, ["tags", "boxes", "points", "scribbles"], LabelProtocol(), progress=False
    )
    tags, boxes, points, scribbles, protocol = _read_all(tmp_path)
    assert summary["images"] == 4
    assert set(tags) == set(boxes) == set(points) == set(scribbles) == {i for i, _ in items}
    assert tags["one"].tolist() == [3, 12, 15] and len(boxes["one"]) == 3 and len(points["one"]) == 5
    np.testing.assert_array_equal(
        scribbles["one"], derive_scribbles(make_mask(), VOC, LabelProtocol(), image_rng(0, "one", "scribbles"))
    )
    assert summary["points"]["total"] == sum(len(p) for p in points.values())
    pixels = sum(m.size for _, m in items)
    assert summary["scribbles"]["labelled_pixel_fraction"] == pytest.approx(
        sum((s != 255).sum() for s in scribbles.values()) / pixels
    )
    assert protocol["kinds"] == ["tags", "boxes", "points", "scribbles"] and protocol["summary"] == summary
    assert protocol["seed"] == 0 and "seed 0" in protocol["description"]
    for image_id, mask in items:
        formats.validate_points(points[image_id], *mask.shape, 21, "points.json", image_id=image_id)
        formats.validate_boxes(boxes[image_id], *mask.shape, 21, "boxes.json", image_id=image_id)
        p = points[image_id].astype(int)
        assert (mask[p[:, 1], p[:, 0]] != 255).all()
        assert (scribbles[image_id][mask == 255] == 255).all()
    assert 0 < len(points["one"]) / make_mask().size < 0.01


def test_derive_labels_deterministic_and_order_independent(tmp_path: Path) -> None:
    items = random_masks(8)
    kinds = ["tags", "boxes", "points", "scribbles"]
    derive_labels(items, VOC, tmp_path / "a", kinds, LabelProtocol(seed=1), progress=False)
    derive_labels(items[::-1], VOC, tmp_path / "b", kinds, LabelProtocol(seed=1), progress=False)
    derive_labels(items, VOC, tmp_path / "c", kinds, LabelProtocol(seed=2), progress=False)
    derive_labels(items[:3], VOC, tmp_path / "d", ["scribbles"], LabelProtocol(seed=1), progress=False)
    a, b, c = _read_all(tmp_path / "a"), _read_all(tmp_path / "b"), _read_all(tmp_path / "c")
    assert all(_same(x, y) for x, y in zip(a[:4], b[:4], strict=True))
    assert _same(a[0], c[0]) and _same(a[1], c[1])  # tags and boxes have no freedom
    assert not _same(a[2], c[2]) and not _same(a[3], c[3])
    subset = {p.stem: formats.read_label_map(p) for p in (tmp_path / "d" / "scribbles").glob("*.png")}
    assert _same(subset, {k: a[3][k] for k in subset})  # other kinds and images do not matter


def test_derive_labels_box_centres_with_given_boxes(tmp_path: Path) -> None:
    mask = make_mask()
    given = {"one": np.array([[5, 5, 25, 20, 15], [-0.5, 30, 31, 60.5, 12]], np.float32)}
    protocol = LabelProtocol(points_mode="box-centres")
    summary = derive_labels(
        [("one", mask), ("two", mask)], VOC, tmp_path, ["boxes", "points"], protocol, given_boxes=given, progress=False
    )
    boxes = formats.read_coco_boxes(tmp_path / "boxes_coco.json")
    np.testing.assert_array_equal(boxes["one"], [[5, 5, 25, 20, 15], [0, 30, 31, 60, 12]])  # clipped
    assert boxes["two"].shape == (0, 5)
    assert summary["boxes"]["source"] == "given" and summary["points"]["total"] == 2 * 5


def test_derive_labels_rejects_bad_input(tmp_path: Path) -> None:
    mask = make_mask()
    for bad_id in ("../evil", "a/b", ".."):
        with pytest.raises(DataError, match="not a safe file name"):
            derive_labels([(bad_id, mask)], VOC, tmp_path, ["scribbles"], LabelProtocol(), progress=False)
    with pytest.raises(DataError, match="appears twice"):
        derive_labels([("a", mask), ("a", mask)], VOC, tmp_path, ["tags"], LabelProtocol(), progress=False)
    with pytest.raises(DataError, match="class id 30"):
        derive_labels([("a", mask + 30)], VOC, tmp_path, ["tags"], LabelProtocol(), progress=False)
    with pytest.raises(ConfigError):
        derive_labels([("a", mask)], VOC, tmp_path, ["clicks"], LabelProtocol(), progress=False)
    with pytest.raises(DataError, match="no area"):
        derive_labels(
            [("a", mask)],
            VOC,
            tmp_path,
            ["boxes"],
            LabelProtocol(),
            given_boxes={"a": np.array([[3, 3, 3, 9, 1]], np.float32)},
            progress=False,
        )


# ------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not VOC454.is_dir(), reason="shared VOC data not present")
def test_real_voc454_derive_labels(tmp_path: Path) -> None:
    given = formats.read_coco_boxes(VOC454 / "boxes_coco.json")
    assert sum(len(b) > 0 for b in given.values()) == 453 and len(given.get("2008_005262", ())) == 0
    ids = [*formats.read_split_list(VOC454 / "ImageSets" / "Segmentation" / "val.txt")[:4], "2008_005262"]
    masks = VOC454 / "SegmentationClass"
    items = [(i, formats.read_label_map(masks / f"{i}.png", num_classes=21, size=(375, 500))) for i in ids]
    summary = derive_labels(
        items, VOC, tmp_path / "derived", ["tags", "boxes", "points", "scribbles"], LabelProtocol(), progress=False
    )
    assert summary["images"] == 5 and summary["boxes"]["total"] >= 4
    assert 0.005 < summary["scribbles"]["labelled_pixel_fraction"] < 0.1
    _, _, points, scribbles, _ = _read_all(tmp_path / "derived")
    for image_id, mask in items:
        assert (scribbles[image_id][mask == 255] == 255).all()
        p = points[image_id].astype(int)
        np.testing.assert_array_equal(mask[p[:, 1], p[:, 0]], points[image_id][:, 2])
    pmp = derive_labels(
        items,
        VOC,
        tmp_path / "pmp",
        ["points"],
        LabelProtocol(points_mode="box-centres"),
        given_boxes=given,
        progress=False,
    )
    assert pmp["points"]["total"] == 5 * sum(len(given.get(i, ())) for i in ids)


def test_mixed_labels_deal_each_image_one_kind_evenly(shapes: Path, tmp_path: Path) -> None:
    from weakseg.data.dataset import SegmentationDataset, voc_layout
    from weakseg.data.simulate import mix_labels

    kinds = ("tags", "boxes", "points", "scribbles")
    assignment = mix_labels(shapes / "labels", tmp_path / "mixed", kinds, seed=3)
    assert sorted(assignment) == [f"shape_{i:04d}" for i in range(8)]
    assert sorted(list(assignment.values()).count(k) for k in kinds) == [2, 2, 2, 2]
    assert assignment == mix_labels(shapes / "labels", tmp_path / "again", kinds, seed=3)  # deterministic
    data = voc_layout(shapes, classes="classes.yaml", labels=str(tmp_path / "mixed"))
    train = SegmentationDataset(data, "train", kinds=kinds, required=("any-weak",))
    for sample in train:
        assert weak_kinds(sample) == (assignment[sample.image_id],)
    with pytest.raises(DataError, match="mixed labels need"):
        mix_labels(tmp_path / "nowhere", tmp_path / "x", kinds)
