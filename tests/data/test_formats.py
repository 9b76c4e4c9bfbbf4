"""Readers, writers and validators of the standard weak-label formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data import formats
from weakseg.data.classes import VOC
from weakseg.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
VOC454 = SHARED / "voc454"


def _label() -> np.ndarray:
    label = np.zeros((5, 7), dtype=np.uint8)
    label[1:3, 2:5] = 15
    label[4, :] = 255
    return label


# ---------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK"])
def test_read_image_converts_to_rgb(tmp_path: Path, mode: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = formats.read_image(path)
    assert out.shape == (6, 9, 3) and out.dtype == np.uint8
    if mode in ("RGB", "RGBA"):
        np.testing.assert_array_equal(out, rgb)


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        formats.read_image(tmp_path / "missing.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="not a recognised image"):
        formats.read_image(junk)
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: unreadable image"):
        formats.read_image(cut)


# ------------------------------------------------------------------------------------------ label maps


def test_label_png_round_trip_palette_and_grey(tmp_path: Path) -> None:
    label = _label()
    formats.write_label_png(tmp_path / "sub" / "p.png", label, VOC.palette_array())
    formats.write_label_png(tmp_path / "g.png", label)
    with Image.open(tmp_path / "sub" / "p.png") as p, Image.open(tmp_path / "g.png") as g:
        assert (p.mode, g.mode) == ("P", "L")
        assert p.getpalette()[15 * 3 : 16 * 3] == list(VOC.palette[15])
    for name in ("sub/p.png", "g.png"):
        np.testing.assert_array_equal(formats.read_label_map(tmp_path / name, num_classes=21), label)
    assert not list(tmp_path.rglob("*.tmp"))


def test_read_label_map_rgb_through_palette(tmp_path: Path) -> None:
    label = _label()
    pal = VOC.palette_array()
    Image.fromarray(pal[label]).save(tmp_path / "rgb.png")
    out = formats.read_label_map(tmp_path / "rgb.png", num_classes=21, palette=pal)
    np.testing.assert_array_equal(out, label)  # black maps to 0, not to an unused black entry
    Image.fromarray(np.dstack([pal[label], np.full(label.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(formats.read_label_map(tmp_path / "rgba.png", palette=pal), label)


def test_read_label_map_errors(tmp_path: Path) -> None:
    label = _label()
    formats.write_label_png(tmp_path / "m.png", label)
    with pytest.raises(DataError, match=r"mask is 7×5 but its image is 8×5"):
        formats.read_label_map(tmp_path / "m.png", size=(5, 8))
    with pytest.raises(DataError, match=r"m.png: class ids 15 outside 0..9"):
        formats.read_label_map(tmp_path / "m.png", num_classes=10)
    rgb = VOC.palette_array()[label]
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad.png: colour \(1, 2, 3\)"):
        formats.read_label_map(tmp_path / "bad.png", palette=VOC.palette_array())
    with pytest.raises(DataError, match="needs a class palette"):
        formats.read_label_map(tmp_path / "bad.png")
    with pytest.raises(DataError, match="file not found"):
        formats.read_label_map(tmp_path / "nope.png")


def test_read_label_map_16bit(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 3], [255, 1]], dtype=np.uint16)).save(tmp_path / "i16.png")
    np.testing.assert_array_equal(formats.read_label_map(tmp_path / "i16.png"), [[0, 3], [255, 1]])
    Image.fromarray(np.array([[0, 300]], dtype=np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match="do not fit"):
        formats.read_label_map(tmp_path / "big.png")


# ----------------------------------------------------------------------------------------- lists, tags


def test_read_split_list(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("# header\n2008_000001\n\n  2008_000002  \nJPEGImages/2008_000003.jpg Seg/x.png\n")
    assert formats.read_split_list(path) == ["2008_000001", "2008_000002", "2008_000003"]
    path.write_text("a\nb\na\n")
    with pytest.raises(DataError, match="listed twice"):
        formats.read_split_list(path)
    path.write_text("# nothing\n")
    with pytest.raises(DataError, match="no image ids"):
        formats.read_split_list(path)


def test_tags_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "tags.json"
    formats.write_tags_json(path, {"b": [3, 1, 3], "a": []})
    tags = formats.read_tags_json(path)
    assert tags["b"].dtype == np.int64 and tags["b"].tolist() == [1, 3] and tags["a"].size == 0
    assert list(json.loads(path.read_text())) == ["a", "b"]  # sorted keys
    path.write_text('{"a": [1, 2.5]}')
    with pytest.raises(DataError, match=r"image a: class id 2.5 is not an integer"):
        formats.read_tags_json(path)
    path.write_text('{"a": [1, 2}')
    with pytest.raises(DataError, match=r"tags\.json: malformed JSON at line 1"):
        formats.read_tags_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        formats.read_tags_json(path)
    with pytest.raises(DataError, match="file not found"):
        formats.read_tags_json(tmp_path / "none.json")


# ----------------------------------------------------------------------------------------------- boxes


def test_coco_round_trip(tmp_path: Path) -> None:
    boxes = {"a": np.array([[1, 2, 5, 7.5, 3], [0, 0, 4, 4, 15]], np.float32), "b": np.zeros((0, 5))}
    path = tmp_path / "boxes.json"
    formats.write_coco_boxes(path, boxes, {"a": (10, 12), "b": (3, 4)}, VOC.names)
    data = json.loads(path.read_text())
    assert data["annotations"][0]["bbox"] == [1, 2, 4, 5.5]
    assert {c["id"]: c["name"] for c in data["categories"]}[15] == "person"
    back = formats.read_coco_boxes(path)
    assert back.keys() == boxes.keys() and back["b"].shape == (0, 5)
    np.testing.assert_array_equal(back["a"], boxes["a"])


def test_coco_ignore_flag_and_conversion(tmp_path: Path) -> None:
    coco = {
        "images": [
            {"id": 7, "file_name": "x/2008_1.jpg", "width": 50, "height": 40},
            {"id": 8, "file_name": "2008_2.jpg", "width": 50, "height": 40},
        ],
        "annotations": [
            {"image_id": 7, "category_id": 12, "bbox": [10, 5, 20, 30], "ignore": 0},
            {"image_id": 7, "category_id": 3, "bbox": [0, 0, 2, 2], "ignore": 1},
            {"image_id": 7, "category_id": 4, "bbox": [1, 1, 2, 2], "iscrowd": 1},
        ],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    every = formats.read_coco_boxes(path)
    assert set(every) == {"2008_1", "2008_2"} and every["2008_2"].shape == (0, 5)
    np.testing.assert_array_equal(every["2008_1"][0], [10, 5, 30, 35, 12])
    assert len(every["2008_1"]) == 3
    assert formats.read_coco_boxes(path, include_ignored=False)["2008_1"][:, 4].tolist() == [12]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"images": []}, "needs 'images' and 'annotations'"),
        ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] needs"),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            },
            "unknown image_id 2",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 1, "category_id": "cat", "bbox": [0, 0, 1, 1]}],
            },
            "class id 'cat' is not an integer",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}],
            },
            "not a list of 4 finite numbers",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 1]}]},
            r"annotations\[0\] needs",
        ),
    ],
)
def test_coco_structure_errors(tmp_path: Path, payload: dict, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=message):
        formats.read_coco_boxes(path)


def _voc_xml(filename: str, objects: list[tuple[str, int, int, int, int, int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
        for n, a, b, c, e, d in objects
    )
    return f"<annotation><filename>{filename}</filename>{objs}</annotation>"


def test_voc_xml_one_based_conversion(tmp_path: Path) -> None:
    ann = tmp_path / "Annotations"
    ann.mkdir()
    objects = [("dog", 1, 1, 10, 20, 0), ("person", 5, 6, 7, 8, 1)]
    (ann / "a.xml").write_text(_voc_xml("2008_000001.jpg", objects))
    (ann / "b.xml").write_text(
        "<annotation><object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>4</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    boxes = formats.read_voc_xml_boxes(tmp_path, VOC.names)  # the VOC root: Annotations/ is found
    np.testing.assert_array_equal(boxes["2008_000001"], [[0, 0, 10, 20, 12], [4, 5, 7, 8, 15]])
    np.testing.assert_array_equal(boxes["b"], [[1, 2, 4, 5, 8]])  # no <filename>: the xml stem
    easy = formats.read_voc_xml_boxes(ann / "a.xml", VOC.names, include_difficult=False)
    assert easy["2008_000001"][:, 4].tolist() == [12]


def test_voc_xml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(_voc_xml("x.jpg", [("unicorn", 1, 1, 2, 2, 0)]))
    with pytest.raises(DataError, match=r"bad.xml: object 0: unknown class name 'unicorn'"):
        formats.read_voc_xml_boxes(bad, VOC.names)
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><annotation>&e;</annotation>')
    with pytest.raises(DataError, match="DOCTYPE/ENTITY"):
        formats.read_voc_xml_boxes(bomb, VOC.names)
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><object>")
    with pytest.raises(DataError, match="malformed XML"):
        formats.read_voc_xml_boxes(broken, VOC.names)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no \.xml"):
        formats.read_voc_xml_boxes(empty, VOC.names)


# ---------------------------------------------------------------------------------------------- points


def test_points_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "points.json"
    pts = {"a": np.array([[1, 2, 0], [3.5, 4, 15]], np.float32), "b": np.zeros((0, 3), np.float32)}
    formats.write_points_json(path, pts)
    assert json.loads(path.read_text())["a"] == [[1, 2, 0], [3.5, 4, 15]]
    back = formats.read_points_json(path)
    assert back["a"].dtype == np.float32 and back["b"].shape == (0, 3)
    np.testing.assert_array_equal(back["a"], pts["a"])
    path.write_text('{"a": [[1, 2, 1.5]]}')
    with pytest.raises(DataError, match=r"class id 1\.5 is not an integer"):
        formats.read_points_json(path)
    path.write_text('{"a": [[1, 2]]}')
    with pytest.raises(DataError, match=r"point 0 \[1, 2\] is not \[x, y, class_id\]"):
        formats.read_points_json(path)


# ------------------------------------------------------------------------------------------ validation


def test_validate_points() -> None:
    pts = np.array([[0, 0, 0], [499, 374, 20]], np.float32)
    np.testing.assert_array_equal(formats.validate_points(pts, 375, 500, 21, "p.json"), pts)
    message = r"image 2008_001: point \(612\.0, 10\.0\) lies outside the 500×375 image"
    with pytest.raises(DataError, match=message):
        formats.validate_points([[612, 10, 1]], 375, 500, 21, "p.json", image_id="2008_001")
    with pytest.raises(DataError, match=r"lies outside"):
        formats.validate_points([[500, 0, 1]], 375, 500, 21, "p.json")
    with pytest.raises(DataError, match=r"class id 27 outside 0..20"):
        formats.validate_points([[5, 5, 27]], 375, 500, 21, "p.json")


def test_a_box_reaching_outside_its_image_is_clipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="weakseg.data.formats"):
        clipped = formats.validate_boxes([[-20, 0, 502, 10, 1]], 375, 500, 21, "b.json", image_id="X")
    np.testing.assert_array_equal(clipped, [[0, 0, 500, 10, 1]])
    assert "b.json: image X: box [-20, 0, 502, 10] reaches outside the 500×375 image: clipped" in caplog.text
    with pytest.raises(DataError, match=r"image X: box \[600, 0, 700, 10\] has no area inside the 500×375 image"):
        formats.validate_boxes([[600, 0, 700, 10, 1]], 375, 500, 21, "b.json", image_id="X")


def test_validate_boxes() -> None:
    clipped = formats.validate_boxes([[-0.5, 0, 500.8, 375, 3]], 375, 500, 21, "b.json")
    np.testing.assert_array_equal(clipped, [[0, 0, 500, 375, 3]])
    with pytest.raises(DataError, match=r"image X: box \[5, 5, 5, 9\] has no area"):
        formats.validate_boxes([[5, 5, 5, 9, 1]], 375, 500, 21, "b.json", image_id="X")
    with pytest.raises(DataError, match="has no area inside the 500×375 image"):
        formats.validate_boxes([[-0.9, 0, -0.5, 5, 1]], 375, 500, 21, "b.json")
    with pytest.raises(DataError, match=r"class id 27 outside 0..20"):
        formats.validate_boxes([[0, 0, 5, 5, 27]], 375, 500, 21, "b.json")
    assert formats.validate_boxes(np.zeros((0, 5)), 5, 5, 21, "b.json").shape == (0, 5)


def test_validate_tags() -> None:
    assert formats.validate_tags([5, 1, 5], 21, "t.json").tolist() == [1, 5]
    with pytest.raises(DataError, match=r"t.json: image X: class id 27 outside 0..20"):
        formats.validate_tags([27], 21, "t.json", image_id="X")


# ------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not VOC454.is_dir(), reason="shared VOC data not present")
def test_real_voc454_boxes_and_masks() -> None:
    boxes = formats.read_coco_boxes(VOC454 / "boxes_coco.json")
    assert sum(len(b) > 0 for b in boxes.values()) == 453
    assert len(boxes.get("2008_005262", ())) == 0
    for image_id, b in boxes.items():
        formats.validate_boxes(b, 375, 500, 21, "boxes_coco.json", image_id=image_id)
    ids = formats.read_split_list(VOC454 / "ImageSets" / "Segmentation" / "train.txt")
    assert len(ids) == 212
    image = formats.read_image(VOC454 / "JPEGImages" / f"{ids[0]}.jpg")
    mask = formats.read_label_map(VOC454 / "SegmentationClass" / f"{ids[0]}.png", num_classes=21, size=image.shape[:2])
    assert set(np.unique(mask).tolist()) <= set(range(21)) | {255}
