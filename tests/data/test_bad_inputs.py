"""Property-based robustness of every reader: damaged or hostile input never crashes and never reads wrong.

Each property writes a (possibly damaged) file into a fresh temporary folder and calls a reader. The reader must
either return well-formed data that agrees with an independent reading of the same file, or raise a
:class:`~weakseg.errors.WeakSegError` whose one-line message names the file. Any other exception fails the test.
Image ids that come back must be safe file names: outputs are written as ``<folder>/<image_id>.png``.
"""

from __future__ import annotations

import io
import json
import string
import struct
import tempfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TypeVar
from xml.sax.saxutils import escape

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from weakseg.data import formats
from weakseg.data.classes import VOC, get_class_set
from weakseg.errors import WeakSegError

T = TypeVar("T")
K = VOC.num_classes
PALETTE = VOC.palette_array()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# Deterministic (derandomized, no example database) and quick: every property runs in a second or two.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def attempt(read: Callable[[], T], path: Path) -> T | None:
    """``read()``; None when it raised a WeakSegError with a one-line message naming ``path`` (else it propagates)."""
    try:
        return read()
    except WeakSegError as exc:
        message = str(exc)
        assert path.name in message, f"the error does not name {path.name}: {message}"
        assert "\n" not in message and message.strip(), repr(message)
        message.encode("utf-8")  # printable as it stands
        return None


def assert_safe_id(image_id: str) -> None:
    """An id that a reader returns must be a plain, printable file name that stays inside any output folder."""
    name = f"{image_id}.png"
    assert isinstance(image_id, str) and image_id and not image_id.startswith("."), repr(image_id)
    assert PurePosixPath(name).name == name and "\\" not in name, repr(image_id)
    assert image_id.isprintable() and len(name.encode("utf-8")) <= 255, repr(image_id)


def in_temp_file(name: str, data: bytes, check: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        check(path)


# ----------------------------------------------------------------------------------------------- strategies


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, odds: int = 4) -> st.SearchStrategy:
    """``good`` about ``odds`` times out of ``odds + 1``, else ``bad``: mostly valid input with a few faults."""
    return st.integers(0, odds).flatmap(lambda i: bad if i == odds else good)


SAFE_IDS = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
PATHS_AND_DOTS = ["../../x", "..", ".", "", "/etc/passwd", "a/b", "a\\b", "..\\x", "C:\\x", ".hidden"]
HOSTILE_IDS = st.sampled_from([*PATHS_AND_DOTS, "a\x00b", "x\ny", "\ud800", "a\u202eb", "x" * 300, " "])
IDS = mostly(SAFE_IDS, st.one_of(HOSTILE_IDS, st.text(max_size=6)), odds=6)
NUMBERS = st.one_of(
    st.integers(-3, K + 3),
    st.integers(),
    st.floats(),
    st.sampled_from([10**30, -(10**30), 2**63, 10**400, 1e308, -1e308, 0.5, -0.0, 3.0, 1e-300]),
)
JUNK = st.recursive(
    st.none() | st.booleans() | st.text(max_size=4) | NUMBERS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
CLASS_IDS = mostly(st.integers(0, K - 1) | st.integers(0, K - 1).map(float), NUMBERS | JUNK, odds=9)
COORDS = mostly(st.integers(-1, 33) | st.floats(-1, 33), NUMBERS | JUNK, odds=9)


def bomb() -> bytes:
    """A PNG whose header claims 60000×60000 pixels (with a valid header checksum)."""
    png = encode(Image.new("L", (2, 2)), "PNG")
    header = b"IHDR" + struct.pack(">II", 60000, 60000) + png[24:29]
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


FIXED_DAMAGES = {"zero": b"", "text": b"this is not an image\n", "latin-1": b'{"caf\xe9": [1]}'}


@st.composite
def damages(draw: st.DrawFn, kinds: list[str]) -> Callable[[bytes], bytes]:
    """Mostly no damage, else one of ``kinds``. Drawn before any array: later draws favour their first value."""
    how = draw(mostly(st.just("intact"), st.sampled_from(kinds), odds=3))
    where, byte, junk = draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(0, 255)), draw(st.binary(max_size=64))

    def damage(data: bytes) -> bytes:
        at = int(where * len(data))
        changed = {
            "intact": data,
            "truncated": data[:at],
            "flipped": data[:at] + bytes([byte]) + data[at + 1 :],
            "bom": b"\xef\xbb\xbf" + data,
            "random": junk,
        }
        return changed[how] if how in changed else bomb() if how == "bomb" else FIXED_DAMAGES[how]

    damage.__qualname__ = how  # named in a falsifying example
    return damage


@st.composite
def damaged(draw: st.DrawFn, documents: st.SearchStrategy) -> bytes:
    """A document as JSON bytes: intact (mostly) or damaged (truncated, a flipped byte, BOM, not UTF-8, random)."""
    damage = draw(damages(["truncated", "flipped", "bom", "latin-1", "random"]))
    return damage(json.dumps(draw(documents)).encode("utf-8"))


def as_json(data: bytes) -> object:
    """The test's own reading of bytes a reader accepted."""
    return json.loads(data.decode("utf-8-sig"))


def is_number(value: object) -> bool:
    return type(value) in (int, float)


# -------------------------------------------------------------------------------------------------- tags


TAG_DOCUMENTS = mostly(st.dictionaries(IDS, mostly(st.lists(CLASS_IDS, max_size=4), JUNK), max_size=4), JUNK)


@FUZZ
@given(damaged(TAG_DOCUMENTS))
@example(data=b'{"a": [18446744073709551616, 1e300]}')  # class ids beyond int64
def test_tags_json(data: bytes) -> None:
    def check(path: Path) -> None:
        tags = attempt(partial(formats.read_tags_json, path), path)
        if tags is None:
            return
        doc = as_json(data)
        assert isinstance(doc, dict) and set(tags) == set(doc)
        for image_id, ids in tags.items():
            assert_safe_id(image_id)
            assert all(is_number(v) and float(v).is_integer() and v >= 0 for v in doc[image_id])
            assert ids.dtype == np.int64 and ids.tolist() == sorted({int(v) for v in doc[image_id]})
            valid = attempt(partial(formats.validate_tags, ids, K, path, image_id=image_id), path)
            assert valid is None or (valid.tolist() == ids.tolist() and all(0 <= v < K for v in valid))

    in_temp_file("tags-input.json", data, check)


# ------------------------------------------------------------------------------------------------ points

POINT_ENTRIES = mostly(st.tuples(COORDS, COORDS, CLASS_IDS).map(list), st.lists(COORDS, max_size=5) | JUNK, odds=9)
POINT_LISTS = mostly(st.lists(POINT_ENTRIES, max_size=4), JUNK)
POINT_DOCUMENTS = mostly(st.dictionaries(IDS, POINT_LISTS, max_size=3), JUNK)


@FUZZ
@given(st.integers(1, 32), st.integers(1, 32), damaged(POINT_DOCUMENTS))
@example(height=8, width=8, data=b'{"a": [[1, 2, 1e300]]}')  # a class id beyond int64
@example(height=8, width=8, data=b'{"a": [[1e39, 2, 1]]}')  # a coordinate beyond float32
def test_points_json(height: int, width: int, data: bytes) -> None:
    def check(path: Path) -> None:
        points = attempt(partial(formats.read_points_json, path), path)
        if points is None:
            return
        doc = as_json(data)
        assert isinstance(doc, dict) and set(points) == set(doc)
        for image_id, pts in points.items():
            assert_safe_id(image_id)
            rows = doc[image_id]
            assert all(len(r) == 3 and all(is_number(v) for v in r) and float(r[2]).is_integer() for r in rows)
            assert pts.dtype == np.float32 and pts.shape == (len(rows), 3) and np.isfinite(pts).all()
            np.testing.assert_array_equal(pts, np.asarray(rows, dtype=np.float32).reshape(-1, 3))
            valid = attempt(partial(formats.validate_points, pts, height, width, K, path, image_id=image_id), path)
            if valid is not None:
                x, y, c = valid.T
                assert ((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)).all()
                assert ((c >= 0) & (c < K) & (c == np.round(c))).all()

    in_temp_file("points-input.json", data, check)


# ------------------------------------------------------------------------------------------------- boxes

FILE_NAMES = mostly(
    SAFE_IDS.map(lambda s: f"{s}.jpg") | SAFE_IDS.map(lambda s: f"JPEGImages/{s}.png"),
    st.one_of(
        IDS.map(lambda s: f"{s}.jpg"),
        st.sampled_from(["/abs/a.jpg", "../a.jpg", "a\\..\\b.jpg", "..", "C:\\img\\a.jpg", ".jpg", "a/"]),
        JUNK,
    ),
)
IMAGE_KEYS = mostly(st.integers(1, 4) | st.integers(1, 4).map(str), JUNK, odds=9)
BBOXES = mostly(
    st.tuples(st.integers(-1, 30), st.integers(-1, 30), st.integers(1, 20), st.floats(0.5, 20)).map(list),
    st.one_of(
        st.tuples(st.integers(-2, 30), st.integers(-2, 30), st.integers(-3, 0), st.integers(-3, 20)).map(list),
        st.lists(COORDS, min_size=4, max_size=4),
        st.lists(COORDS, max_size=6),
        JUNK,
    ),
)


def _drop_keys(draw: st.DrawFn, entry: dict) -> object:
    """The entry, rarely with one key removed or junk in its place."""
    fault = draw(mostly(st.just("none"), st.sampled_from(["drop", "junk"]), odds=14))
    if fault == "junk":
        return draw(JUNK)
    drop = draw(st.sampled_from(sorted(entry))) if fault == "drop" else None
    return {k: v for k, v in entry.items() if k != drop}


@st.composite
def coco_documents(draw: st.DrawFn) -> object:
    images = [
        _drop_keys(
            draw,
            {"id": draw(mostly(st.just(n), IMAGE_KEYS)), "file_name": draw(FILE_NAMES), "width": 32, "height": 24},
        )
        for n in range(1, draw(st.integers(2, 4)))
    ]
    keys = st.sampled_from([image["id"] for image in images if isinstance(image, dict) and "id" in image] or [1])
    annotations = [
        _drop_keys(
            draw,
            {
                "image_id": draw(mostly(keys, IMAGE_KEYS, odds=9)),
                "category_id": draw(CLASS_IDS),
                "bbox": draw(BBOXES),
                "iscrowd": draw(st.sampled_from([0, 1])),
            },
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    categories = draw(
        mostly(
            st.just([{"id": i, "name": n} for i, n in enumerate(VOC.names)]),
            st.lists(st.fixed_dictionaries({"id": CLASS_IDS, "name": st.text(max_size=3)}), max_size=3) | JUNK,
        )
    )
    doc = {"images": images, "annotations": annotations, "categories": categories}
    fault = draw(mostly(st.just("none"), st.sampled_from(["drop", "junk", "document"]), odds=9))
    if fault == "document":
        return draw(JUNK)
    key = draw(st.sampled_from(sorted(doc)))
    if fault == "drop":
        del doc[key]
    elif fault == "junk":
        doc[key] = draw(JUNK)
    return doc


def coco_stem(file_name: str) -> str:
    return PurePosixPath(file_name.replace("\\", "/")).stem


@FUZZ
@given(st.booleans(), st.integers(1, 32), st.integers(1, 32), damaged(coco_documents()))
@example(
    include_ignored=True,
    height=8,
    width=8,
    data=b'{"images": [{"id": 1, "file_name": "a.jpg"}], '
    b'"annotations": [{"image_id": 1, "category_id": 1e300, "bbox": [0, 0, 1, 1]}]}',
)  # a class id beyond int64
@example(
    include_ignored=True,
    height=8,
    width=8,
    data=b'{"images": [{"id": 1, "file_name": "a.jpg"}], '
    b'"annotations": [{"image_id": 1, "category_id": 1, "bbox": [1e39, 0, 1, 1]}]}',
)  # beyond float32
def test_coco_boxes(include_ignored: bool, height: int, width: int, data: bytes) -> None:
    def check(path: Path) -> None:
        boxes = attempt(partial(formats.read_coco_boxes, path, include_ignored=include_ignored), path)
        if boxes is None:
            return
        doc = as_json(data)
        stems = {image["id"]: coco_stem(image["file_name"]) for image in doc["images"]}
        assert set(boxes) == set(stems.values())
        expected: dict[str, list] = {stem: [] for stem in stems.values()}
        known = {c["id"] for c in doc["categories"]} if "categories" in doc else None
        for ann in doc["annotations"]:
            x, y, w, h = ann["bbox"]
            assert float(ann["category_id"]).is_integer() and ann["category_id"] >= 0
            assert known is None or ann["category_id"] in known
            if include_ignored or not (ann.get("ignore") or ann.get("iscrowd")):
                expected[stems[ann["image_id"]]].append([x, y, x + w, y + h, ann["category_id"]])
        for image_id, table in boxes.items():
            assert_safe_id(image_id)
            assert table.dtype == np.float32 and np.isfinite(table).all()
            np.testing.assert_array_equal(table, np.asarray(expected[image_id], np.float32).reshape(-1, 5))
            check_boxes(table, height, width, path, image_id)

    in_temp_file("boxes-input.json", data, check)


def check_boxes(table: np.ndarray, height: int, width: int, path: Path, image_id: str) -> None:
    """Boxes a reader returned: the validator refuses them, naming the file, or they are non-empty and inside."""
    valid = attempt(partial(formats.validate_boxes, table, height, width, K, path, image_id=image_id), path)
    if valid is not None:
        x0, y0, x1, y1, c = valid.T
        assert ((x0 >= 0) & (x1 <= width) & (y0 >= 0) & (y1 <= height) & (x1 > x0) & (y1 > y0)).all()
        assert ((c >= 0) & (c < K) & (c == np.round(c))).all()


XML_TEXT = mostly(
    st.integers(-3, 30).map(str) | st.sampled_from([" 4 ", "2.5"]),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "abc", "", "0x10"]) | st.none(),
    odds=14,
)


@st.composite
def voc_objects(draw: st.DrawFn) -> tuple[str, str | None, list[str | None] | None]:
    name = draw(mostly(st.sampled_from(VOC.names), st.sampled_from(["unicorn", "", "Dog", "dog "]), odds=9))
    xmin, ymin = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    valid = st.just([str(xmin), str(ymin), str(xmin + draw(st.integers(0, 9))), str(ymin + draw(st.integers(0, 9)))])
    coords = draw(mostly(valid, st.none() | st.lists(XML_TEXT, min_size=4, max_size=4)))
    return name, draw(st.sampled_from([None, "0", "1", "x"])), coords


def voc_document(filename: str | None, objects: list) -> str:
    parts = [] if filename is None else [f"<filename>{escape(filename)}</filename>"]
    for name, difficult, coords in objects:
        parts.append(f"<object><name>{escape(name)}</name>")
        if difficult is not None:
            parts.append(f"<difficult>{difficult}</difficult>")
        if coords is not None:
            tags = ("xmin", "ymin", "xmax", "ymax")
            parts.append(
                "<bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(tags, coords, strict=True) if v is not None)
            )
            parts.append("</bndbox>")
        parts.append("</object>")
    return "<annotation>" + "".join(parts) + "</annotation>"


@FUZZ
@given(
    st.one_of(st.none(), FILE_NAMES.filter(lambda f: isinstance(f, str))),
    st.lists(voc_objects(), max_size=3),
    mostly(st.just("intact"), st.sampled_from(["truncated", "doctype", "root", "encoding", "binary", "no-xml"])),
    st.booleans(),
)
def test_voc_xml_boxes(filename: str | None, objects: list, damage: str, include_difficult: bool) -> None:
    text = voc_document(filename, objects)
    data = {
        "intact": text.encode("utf-8", "surrogatepass"),
        "truncated": text.encode("utf-8", "surrogatepass")[: len(text) // 2],
        "doctype": b'<!DOCTYPE a [<!ENTITY e "x">]>' + text.encode("utf-8", "surrogatepass"),
        "root": text.replace("annotation>", "notes>").encode("utf-8", "surrogatepass"),
        "encoding": b'<?xml version="1.0" encoding="no-such-codec"?>' + text.encode("utf-8", "surrogatepass"),
        "binary": b"\x00\xff\xfe<annotation>",
        "no-xml": b"",
    }[damage]

    def check(path: Path) -> None:
        boxes = attempt(partial(formats.read_voc_xml_boxes, path, VOC.names, include_difficult=include_difficult), path)
        if boxes is None:
            return
        ((image_id, table),) = boxes.items()
        assert_safe_id(image_id)
        assert table.dtype == np.float32 and table.shape[1] == 5 and np.isfinite(table).all()
        check_boxes(table, 24, 32, path, image_id)
        if damage == "intact":
            assert image_id == (coco_stem(filename.strip()) if filename and filename.strip() else path.stem)
            rows = [
                [float(c[0]) - 1, float(c[1]) - 1, float(c[2]), float(c[3]), VOC.names.index(name.strip())]
                for name, difficult, c in objects
                if include_difficult or difficult in (None, "0")
            ]
            np.testing.assert_array_equal(table, np.asarray(rows, np.float32).reshape(-1, 5))

    in_temp_file("2008_000123.xml", data, check)


# ------------------------------------------------------------------------------------------- split lists

SPLIT_LINES = mostly(
    st.one_of(
        SAFE_IDS,
        SAFE_IDS.map(lambda s: f"JPEGImages/{s}.jpg SegmentationClass/{s}.png"),
        SAFE_IDS.map(lambda s: f"/JPEGImages/{s}.jpg"),
        SAFE_IDS.map(lambda s: f"  {s}\t# note"),
        st.sampled_from(["", "   ", "# comment"]),
    ),
    st.one_of(
        IDS,
        st.sampled_from(["../../etc/x.jpg", "a/../b.jpg", "..\\x.png", "x.jpg\x00", ".jpg", "\x1c", "a\u2028b"]),
    ),
    odds=9,
)


@FUZZ
@given(
    st.lists(SPLIT_LINES, min_size=1, max_size=6, unique=True),
    st.sampled_from(["\n", "\r\n"]),
    mostly(st.just("intact"), st.sampled_from(["bom", "latin-1", "binary", "duplicate"])),
)
def test_split_list(lines: list[str], newline: str, damage: str) -> None:
    if damage == "duplicate":
        lines = [*lines, *lines[:1]]
    text = newline.join(lines)
    data = {
        "bom": b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass"),
        "latin-1": b"caf\xe9\n",
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00",
    }.get(damage, text.encode("utf-8", "surrogatepass"))

    def check(path: Path) -> None:
        ids = attempt(partial(formats.read_split_list, path), path)
        if ids is None:
            return
        expected = []
        for line in data.decode("utf-8-sig").splitlines():
            token = line.strip().split()[0] if line.strip() and not line.strip().startswith("#") else None
            if token is not None:
                path_like = "/" in token or "\\" in token or PurePosixPath(token).suffix.lower() in IMAGE_SUFFIXES
                expected.append(coco_stem(token) if path_like else token)
        assert ids == expected and len(set(ids)) == len(ids) and ids
        for image_id in ids:
            assert_safe_id(image_id)

    in_temp_file("train.txt", data, check)


# ------------------------------------------------------------------------------------------ images, masks

LOSSLESS = {"PNG", "BMP", "TIFF"}
IMAGE_MODES = {
    "PNG": ["RGB", "RGBA", "L", "P", "LA", "I;16", "1"],
    "JPEG": ["RGB", "L", "CMYK"],
    "BMP": ["RGB", "L", "P"],
    "TIFF": ["RGB", "L", "F", "I", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
}
IMAGE_DAMAGES = ["truncated", "flipped", "zero", "random", "text", "bomb"]


@st.composite
def image_files(draw: st.DrawFn) -> tuple[bytes, str, np.ndarray, str, str]:
    """(file bytes, suffix, the RGB pixels encoded, format, damage)."""
    fmt = draw(st.sampled_from(sorted(IMAGE_MODES)))
    mode = draw(st.sampled_from(IMAGE_MODES[fmt]))
    suffix = draw(st.sampled_from([".jpg", ".png", ".tif", f".{fmt.lower()}"]))
    damage = draw(damages(IMAGE_DAMAGES))
    rgb = draw(arrays(np.uint8, (draw(st.integers(1, 12)), draw(st.integers(1, 12)), 3)))
    img = Image.fromarray(rgb[..., 0].astype(np.float32)) if mode == "F" else Image.fromarray(rgb).convert(mode)
    return damage(encode(img, fmt)), suffix, rgb if mode == "RGB" else None, fmt, damage.__qualname__


@pytest.mark.filterwarnings("ignore:(Truncated File Read|Corrupt EXIF data):UserWarning")  # PIL, on the junk TIFFs
@FUZZ
@given(image_files())
def test_read_image(case: tuple) -> None:
    data, suffix, rgb, fmt, how = case

    def check(path: Path) -> None:
        image = attempt(partial(formats.read_image, path), path)
        if image is None:
            assert how != "intact", "an intact image was refused"
            return
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if how == "intact" and rgb is not None:
            assert image.shape == rgb.shape
            if fmt in LOSSLESS:
                np.testing.assert_array_equal(image, rgb)

    in_temp_file(f"photo{suffix}", data, check)


MASK_VALUES = mostly(st.just([0, 1, 15, K - 1, 255]), st.just([0, 1, K, K + 7, 254, 255]), odds=3)
MASK_KINDS = mostly(
    st.sampled_from(["L", "P", "I;16", "I", "LA", "RGB", "RGBA"]),
    st.sampled_from(["I;16-big", "I-negative", "RGB-random", "RGB-jpeg", "F", "1"]),
    odds=2,
)
SINGLE_CHANNEL = {"L", "P", "I;16", "I;16-big", "I", "I-negative", "LA"}


def encode_mask(draw: st.DrawFn, ids: np.ndarray, kind: str) -> tuple[bytes, np.ndarray]:
    """A mask file of ``kind`` made from class ids, and the values it stores (its class ids or its colours)."""
    values: np.ndarray = ids
    if kind == "P":
        img = Image.fromarray(ids, "L").convert("P")
        img.putpalette(PALETTE.ravel().tolist())
    elif kind in ("I;16", "I;16-big"):
        values = ids.astype(np.uint16) + (300 if kind == "I;16-big" else 0)
        img = Image.fromarray(values)
    elif kind in ("I", "I-negative"):
        values = ids.astype(np.int32) - (1 if kind == "I-negative" else 0)
        img = Image.fromarray(values)
    elif kind in ("RGB", "RGBA", "RGB-jpeg"):
        values = PALETTE[ids]
        img = Image.fromarray(values).convert("RGBA" if kind == "RGBA" else "RGB")
    elif kind == "RGB-random":
        values = draw(arrays(np.uint8, (*ids.shape, 3)))
        img = Image.fromarray(values)
    elif kind == "F":
        img = Image.fromarray(ids.astype(np.float32))
    else:
        img = Image.fromarray(ids).convert(kind)
    fmt = {"RGB-jpeg": "JPEG", "F": "TIFF", "I": "TIFF", "I-negative": "TIFF"}.get(kind, "PNG")
    return encode(img, fmt), values


@st.composite
def mask_files(draw: st.DrawFn) -> tuple[bytes, np.ndarray, str, str]:
    """(file bytes, the values encoded, kind, damage)."""
    kind, damage, values = draw(MASK_KINDS), draw(damages(IMAGE_DAMAGES)), draw(MASK_VALUES)
    ids = draw(arrays(np.uint8, (draw(st.integers(1, 10)), draw(st.integers(1, 10))), elements=st.sampled_from(values)))
    data, stored = encode_mask(draw, ids, kind)
    return damage(data), stored, kind, damage.__qualname__


@FUZZ
@given(
    mostly(st.sampled_from(["none", "right"]), st.just("wrong"), odds=3),
    mostly(st.just(True), st.just(False), odds=3),
    st.tuples(st.integers(1, 10), st.integers(1, 10)),
    mask_files(),
)
def test_read_label_map(size_check: str, with_palette: bool, wrong_size: tuple[int, int], case: tuple) -> None:
    data, values, kind, how = case
    size = {"none": None, "right": values.shape[:2], "wrong": wrong_size}[size_check]

    def check(path: Path) -> None:
        palette = PALETTE if with_palette else None
        label = attempt(partial(formats.read_label_map, path, num_classes=K, size=size, palette=palette), path)
        if label is None:
            return
        assert label.dtype == np.uint8 and label.ndim == 2
        assert size is None or label.shape == tuple(size)
        assert ((label < K) | (label == 255)).all()
        if how == "intact" and kind in SINGLE_CHANNEL:
            np.testing.assert_array_equal(label, values)
        elif how == "intact" and kind in ("RGB", "RGBA", "RGB-random"):
            np.testing.assert_array_equal(PALETTE[label], values)  # every colour is its class's colour

    in_temp_file("mask.png", data, check)


# --------------------------------------------------------------------------------- pathological documents

PATHOLOGICAL = {
    "deep": b"[" * 5000 + b"]" * 5000,  # deeper than Python's recursion limit
    "digits": b'{"a": [' + b"7" * 5000 + b"]}",  # more digits than Python converts
    "nul": b'{"a\\u0000": [1]}',
}
JSON_READERS = {
    "tags": formats.read_tags_json,
    "points": formats.read_points_json,
    "coco": formats.read_coco_boxes,
    "class set": lambda path: get_class_set(str(path)),
}


@pytest.mark.parametrize("reader", sorted(JSON_READERS))
@pytest.mark.parametrize("document", sorted(PATHOLOGICAL))
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_pathological_documents(tmp_path: Path, reader: str, document: str, suffix: str) -> None:
    """Too deep, too long a number, a NUL in a key (one by one: a failing deep document shrinks slowly)."""
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(PATHOLOGICAL[document])
    assert attempt(partial(JSON_READERS[reader], path), path) is None


# --------------------------------------------------------------------------------------------- class sets

NAMES = st.lists(st.sampled_from(["bg", "cat", "dog", "car"]), min_size=1, max_size=4, unique=True)
COLOURS = st.lists(st.integers(0, 255), min_size=3, max_size=3)
CLASS_DOCUMENTS = NAMES.flatmap(
    lambda names: st.fixed_dictionaries(
        {
            "names": mostly(st.just(names), NAMES | st.lists(JUNK, min_size=1, max_size=3) | JUNK),
            "palette": mostly(
                st.lists(COLOURS, min_size=len(names), max_size=len(names)),
                st.lists(st.lists(st.integers(-5, 300), min_size=2, max_size=4), max_size=4) | JUNK,
            ),
        },
        optional={
            "background": mostly(st.integers(0, len(names) - 1) | st.none(), st.integers(-1, 4) | JUNK),
            "ignore_index": mostly(st.just(255), st.sampled_from([4, 1000, -1, True]) | JUNK),
        },
    )
)


@FUZZ
@given(st.sampled_from([".json", ".yaml"]), damaged(mostly(CLASS_DOCUMENTS, JUNK)))
def test_class_set_file(suffix: str, data: bytes) -> None:
    def check(path: Path) -> None:
        classes = attempt(partial(get_class_set, str(path)), path)
        if classes is None:
            return
        doc = yaml.safe_load(data) if suffix == ".yaml" else as_json(data)
        assert list(classes.names) == doc["names"] and len(set(classes.names)) == len(classes.names)
        assert [list(c) for c in classes.palette] == doc["palette"]
        assert doc.get("background", 0) == classes.background and type(doc.get("background", 0)) is not bool
        assert classes.num_classes < classes.ignore_index <= 255
        palette = classes.palette_array()
        assert palette.shape == (256, 3) and palette.dtype == np.uint8

    in_temp_file(f"classes{suffix}", data, check)


# ------------------------------------------------------------------------------------ hostile image ids

UNSAFE_IDS = ["../../x", "..", "a\x00b", ".hidden", "x\u202ey", "x\ny", "x" * 300]


def refused(path: Path, read: Callable[[Path], object]) -> str:
    """The message of the DataError that reading ``path`` must raise."""
    with pytest.raises(WeakSegError) as info:
        read(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    return message


@pytest.mark.parametrize("bad", [*UNSAFE_IDS, "/etc/passwd", "a/b", "a\\b", "C:\\x"])
@pytest.mark.parametrize("reader", ["tags", "points"])
def test_json_keys_must_be_safe_ids(tmp_path: Path, bad: str, reader: str) -> None:
    path = tmp_path / f"{reader}.json"
    path.write_text(json.dumps({bad: [[1, 1, 1]] if reader == "points" else [1]}))
    read = formats.read_points_json if reader == "points" else formats.read_tags_json
    assert "not a safe file name" in refused(path, read)


@pytest.mark.parametrize("bad", [*(i for i in UNSAFE_IDS if "\n" not in i), "../x", "a/../b", "..\\x", "x\x00/y"])
def test_split_list_paths_must_not_climb_or_hide(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "train.txt"
    path.write_text(f"good\n{bad}.jpg\n", encoding="utf-8")
    assert "line 2" in refused(path, formats.read_split_list)


def test_split_list_paths_give_their_stem(tmp_path: Path) -> None:
    """Folders and absolute paths (DeepLab's and SegNet's lists start with '/') only locate the file: the id is its
    stem."""
    path = tmp_path / "train.txt"
    path.write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\nJPEGImages/b.jpg\n/SegNet/CamVid/train/c.png\n")
    assert formats.read_split_list(path) == ["a", "b", "c"]


def test_voc_xml_folder_ignores_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "._a.xml").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "a.xml").write_text("<annotation><filename>a.jpg</filename></annotation>")
    assert list(formats.read_voc_xml_boxes(tmp_path, VOC.names)) == ["a"]


@pytest.mark.parametrize("bad", [*UNSAFE_IDS, "../x", "/abs/x", "a/../b", "..\\x", "C:\\img\\x", ""])
def test_coco_and_voc_file_names_must_be_safe(tmp_path: Path, bad: str) -> None:
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": f"{bad}.jpg"}], "annotations": []}))
    refused(coco, formats.read_coco_boxes)
    if "\x00" not in bad:  # XML cannot hold NUL at all (a parse error, tested above)
        xml = tmp_path / "a.xml"
        xml.write_text(f"<annotation><filename>{escape(bad)}.jpg</filename></annotation>", encoding="utf-8")
        refused(xml, partial(formats.read_voc_xml_boxes, class_names=VOC.names))
