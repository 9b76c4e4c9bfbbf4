"""Readers and writers of the standard weak-label formats, and validators of their contents.

Every reader raises :class:`~weakseg.errors.DataError` naming the file and the problem for anything a user
can get wrong (missing file, unreadable image, malformed JSON/XML, wrong structure, bad class id).
Coordinates follow the conventions of :mod:`weakseg.data.sample`. Every writer is atomic (temporary file in
the same folder, then ``os.replace``) and creates missing parent folders; JSON is UTF-8 with sorted keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

import numpy as np
from PIL import Image

from weakseg.data.sample import clip_boxes, empty_boxes, empty_points, image_id_problem
from weakseg.errors import DataError

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_SINGLE_CHANNEL_MODES = {"L", "P", "I", "I;16", "I;16L", "I;16B"}
_UNSAFE_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
MAX_CLASS_ID = 255  # label maps are 8-bit
# Coordinates beyond ±2^24 px are no image's; below it float32 still holds every integer exactly.
MAX_COORDINATE = 2.0**24


# --------------------------------------------------------------------------------------------- helpers


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(fileobj)`` into a temporary sibling, fsync it, then move it into place.

    A crash or a full disk leaves the previous file untouched; an ``OSError`` becomes a :class:`DataError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DataError(path, f"cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(path, f"cannot write: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON with sorted keys, atomically."""
    data = (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    return path


def _read_json(path: str | Path) -> Any:
    path = _require_file(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise DataError(path, "malformed JSON: a number has too many digits") from None
    except RecursionError:
        raise DataError(path, "malformed JSON: nested too deeply") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None


def _short(value: Any) -> str:
    """``repr(value)``, cut to a readable length for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool) within ±``MAX_COORDINATE``, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if -MAX_COORDINATE <= value <= MAX_COORDINATE else None  # False for NaN


def _class_id(value: Any, path: str | Path, where: str) -> int:
    """An integral class id in 0..``MAX_CLASS_ID`` (``3`` or ``3.0``) or a DataError."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise DataError(path, f"{where}: class id {_short(value)} is not an integer")
    if value < 0:
        raise DataError(path, f"{where}: class id {_short(value)} is negative")
    if value > MAX_CLASS_ID:
        raise DataError(path, f"{where}: class id {_short(value)} is larger than {MAX_CLASS_ID}")
    return int(value)


def _image_id(key: Any, path: str | Path, where: str = "") -> str:
    """``key`` when it is a safe image id (see :func:`~weakseg.data.sample.image_id_problem`), else a DataError."""
    problem = image_id_problem(key)
    if problem is not None:
        raise DataError(path, f"{where}{problem}")
    return key


def _image_id_from_name(name: str, path: str | Path, where: str, *, allow_absolute: bool = False) -> str:
    """The image id of a file name that may carry folders (``JPEGImages/x.jpg`` → ``x``), or a DataError.

    Only the stem is used, but a name that climbs out of its folder (``..``) or holds a NUL is refused, as is an
    absolute path unless ``allow_absolute`` (split lists of DeepLab and SegNet start with ``/``).
    """
    if "\0" in name:
        raise DataError(path, f"{where}file name {_short(name)} holds a NUL character")
    posix = name.replace("\\", "/")
    if ".." in posix.split("/"):
        raise DataError(path, f"{where}file name {_short(name)} climbs out of its folder ('..')")
    if not allow_absolute and (posix.startswith("/") or PureWindowsPath(name).is_absolute()):
        raise DataError(path, f"{where}file name {_short(name)} is an absolute path")
    return _image_id(PurePosixPath(posix).stem, path, where)


def _json_number(value: float) -> int | float:
    """An int when the value is integral, so files read ``12`` rather than ``12.0``."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _expect_mapping(obj: Any, path: str | Path, what: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object {what}, got {type(obj).__name__}")
    return obj


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn the errors of opening or decoding the image ``path`` into DataErrors."""
    try:
        yield
    except Image.UnidentifiedImageError:
        raise DataError(path, "not a recognised image file") from None
    except Image.DecompressionBombError:
        raise DataError(path, "image is too large (decompression bomb check)") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(path, f"unreadable image: {exc}") from None


def _open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image (so truncated files fail here), or raise DataError."""
    path = _require_file(path)
    with _decoding(path), Image.open(path) as img:
        img.load()
        return img.copy()


# --------------------------------------------------------------------------------------- images, masks


def read_image(path: str | Path) -> np.ndarray:
    """An image as H×W×3 uint8 RGB (raw pixels: EXIF orientation is not applied)."""
    img = _open_image(path)
    try:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(path, f"cannot convert {img.mode} image to RGB: {exc}") from None
    return np.array(rgb, dtype=np.uint8)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, from its header alone, or a DataError."""
    path = _require_file(path)
    with _decoding(path), Image.open(path) as img:
        return img.height, img.width


def _rgb_to_index(rgb: np.ndarray, palette: np.ndarray, path: str | Path) -> np.ndarray:
    """Map each RGB colour to the first palette index with that colour."""
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    codes, first = np.unique(pal_codes, return_index=True)
    rgb = rgb.astype(np.int64)
    pix = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pos = np.clip(np.searchsorted(codes, pix), 0, len(codes) - 1)
    unknown = codes[pos] != pix
    if unknown.any():
        r, c = np.argwhere(unknown)[0]
        colour = tuple(int(v) for v in rgb[r, c])
        count = int(unknown.sum())
        raise DataError(path, f"colour {colour} at (x={c}, y={r}) is not in the palette ({count} pixels)")
    return first[pos].astype(np.uint8)


def read_label_map(
    path: str | Path,
    *,
    num_classes: int | None = None,
    size: tuple[int, int] | None = None,
    palette: np.ndarray | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """A mask or scribble PNG as an H×W uint8 label map.

    Single-channel (L, I, palette-index P) images are read as class ids directly; RGB(A) images are mapped
    through ``palette`` (256×3). ``size`` is the expected (height, width); ids ≥ ``num_classes`` other than
    ``ignore_index`` are an error.
    """
    img = _open_image(path)
    if img.mode in ("LA", "PA"):
        img = img.getchannel(0)
    if img.mode in _SINGLE_CHANNEL_MODES:
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 255:
                raise DataError(path, f"label values {int(arr.min())}..{int(arr.max())} do not fit in 0..255")
            arr = arr.astype(np.uint8)
    elif img.mode in ("RGB", "RGBA"):
        if palette is None:
            raise DataError(path, f"{img.mode} mask needs a class palette to map colours to class ids")
        arr = _rgb_to_index(np.asarray(img.convert("RGB")), palette, path)
    else:
        raise DataError(path, f"unsupported mask mode {img.mode} (use a single-channel, palette or RGB PNG)")
    arr = np.array(arr, dtype=np.uint8)
    if size is not None and arr.shape != tuple(size):
        h, w = arr.shape
        raise DataError(path, f"mask is {w}×{h} but its image is {size[1]}×{size[0]}")
    if num_classes is not None:
        values = np.unique(arr)
        bad = values[(values >= num_classes) & (values != ignore_index)]
        if bad.size:
            ids = ", ".join(str(int(v)) for v in bad[:10])
            raise DataError(path, f"class ids {ids} outside 0..{num_classes - 1} ({ignore_index} = ignore)")
    return arr


def write_label_png(path: str | Path, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an H×W label map as a palette PNG (when ``palette``, 256×3 uint8, is given) or a grey PNG."""
    label = np.asarray(label)
    if label.ndim != 2 or (label.size and (label.min() < 0 or label.max() > 255)):
        raise ValueError(f"label map must be 2-D with values in 0..255, got shape {label.shape}")
    arr = np.ascontiguousarray(label, dtype=np.uint8)
    if palette is None:
        img = Image.fromarray(arr)
    else:
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256].ravel().tolist())
    atomic_write(path, lambda f: img.save(f, format="PNG"))


# ----------------------------------------------------------------------------------------- lists, tags


def read_split_list(path: str | Path) -> list[str]:
    """Image ids, one per line; blank lines and ``#`` comments skipped.

    A line ``JPEGImages/x.jpg SegmentationClass/x.png`` (or a bare file name, or an absolute path as in DeepLab's
    and SegNet's lists) gives the stem ``x``. Ids that are not safe file names, and paths with ``..``, are refused.
    """
    path = _require_file(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        where = f"line {lineno}: "
        if "/" in token or "\\" in token or PurePosixPath(token).suffix.lower() in _IMAGE_SUFFIXES:
            token = _image_id_from_name(token, path, where, allow_absolute=True)
        else:
            token = _image_id(token, path, where)
        if token in seen:
            raise DataError(path, f"image id {token!r} listed twice (lines {seen[token]} and {lineno})")
        seen[token] = lineno
        ids.append(token)
    if not ids:
        raise DataError(path, "lists no image ids")
    return ids


def read_tags_json(path: str | Path) -> dict[str, np.ndarray]:
    """``{image_id: [class ids]}`` as sorted unique int64 arrays."""
    data = _expect_mapping(_read_json(path), path, "{image_id: [class ids]}")
    tags = {}
    for image_id, ids in data.items():
        _image_id(image_id, path)
        if not isinstance(ids, list):
            raise DataError(path, f"image {image_id}: expected a list of class ids, got {type(ids).__name__}")
        values = [_class_id(v, path, f"image {image_id}") for v in ids]
        tags[image_id] = np.unique(np.asarray(values, dtype=np.int64))
    return tags


def write_tags_json(path: str | Path, tags: Mapping[str, Sequence[int]]) -> None:
    """Write ``{image_id: [class ids]}`` (sorted, unique)."""
    write_json(path, {k: sorted({int(v) for v in ids}) for k, ids in tags.items()})


# ----------------------------------------------------------------------------------------------- boxes


def read_coco_boxes(path: str | Path, *, include_ignored: bool = True) -> dict[str, np.ndarray]:
    """COCO boxes as ``{file_name stem: N×5 float32 [x0, y0, x1, y1, class_id]}``.

    ``category_id`` is the class id (VOC convention 1..20) and must be one of ``categories`` when the file lists
    them. Images without annotations map to an empty array; ``include_ignored=False`` drops annotations flagged
    ``ignore`` or ``iscrowd``. Box geometry (area, inside the image) is checked by :func:`validate_boxes`.
    """
    data = _expect_mapping(_read_json(path), path, "with 'images' and 'annotations'")
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataError(path, "COCO file needs 'images' and 'annotations' lists")
    categories = _coco_categories(data, path)
    stems: dict[int | str, str] = {}
    rows: dict[str, list[list[float]]] = {}
    for i, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(path, f"images[{i}] needs an 'id' and a 'file_name'")
        if not _is_coco_id(image["id"]):
            raise DataError(path, f"images[{i}]: id {_short(image['id'])} is not an integer or a string")
        stem = _image_id_from_name(image["file_name"], path, f"images[{i}]: ")
        if image["id"] in stems or stem in rows:
            raise DataError(path, f"images[{i}]: duplicate image id {_short(image['id'])} or file name {stem!r}")
        stems[image["id"]] = stem
        rows[stem] = []
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or not {"image_id", "category_id", "bbox"} <= ann.keys():
            raise DataError(path, f"{where} needs 'image_id', 'category_id' and 'bbox'")
        if not _is_coco_id(ann["image_id"]) or ann["image_id"] not in stems:
            raise DataError(path, f"{where} refers to unknown image_id {_short(ann['image_id'])}")
        bbox = ann["bbox"]
        xywh = [_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else [None]
        if any(v is None for v in xywh):
            limit = f"within ±{MAX_COORDINATE:.0f}"
            raise DataError(path, f"{where}: bbox {_short(bbox)} is not a list of 4 finite numbers ({limit})")
        class_id = _class_id(ann["category_id"], path, where)
        if categories is not None and class_id not in categories:
            raise DataError(path, f"{where}: category_id {class_id} is not one of the file's categories")
        if include_ignored or not (ann.get("ignore") or ann.get("iscrowd")):
            x, y, w, h = xywh
            rows[stems[ann["image_id"]]].append([x, y, x + w, y + h, class_id])
    return {k: np.asarray(v, dtype=np.float32).reshape(-1, 5) for k, v in rows.items()}


def _is_coco_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _coco_categories(data: dict, path: str | Path) -> set[int] | None:
    """The category ids a COCO file declares (None when it has no ``categories``)."""
    if "categories" not in data:
        return None
    categories = data["categories"]
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c for c in categories):
        raise DataError(path, "'categories' must be a list of objects with an 'id'")
    return {_class_id(c["id"], path, f"categories[{i}]") for i, c in enumerate(categories)}


def write_coco_boxes(
    path: str | Path,
    boxes: Mapping[str, np.ndarray],
    sizes: Mapping[str, tuple[int, int]],
    class_names: Sequence[str],
) -> None:
    """Write boxes as COCO JSON (the inverse of :func:`read_coco_boxes`); ``sizes`` holds (height, width).

    Every class index is written as a category (``id`` = index), so ids read back unchanged.
    """
    images, annotations = [], []
    for num, image_id in enumerate(sorted(boxes), 1):
        if image_id not in sizes:
            raise ValueError(f"no image size given for {image_id!r}")
        height, width = sizes[image_id]
        images.append({"id": num, "file_name": f"{image_id}.jpg", "width": int(width), "height": int(height)})
        for x0, y0, x1, y1, cls in np.asarray(boxes[image_id], dtype=np.float64).reshape(-1, 5):
            bbox = [_json_number(x0), _json_number(y0), _json_number(x1 - x0), _json_number(y1 - y0)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": num,
                    "category_id": int(cls),
                    "bbox": bbox,
                    "area": _json_number((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                    "ignore": 0,
                }
            )
    categories = [{"id": i, "name": str(n), "supercategory": "none"} for i, n in enumerate(class_names)]
    write_json(path, {"images": images, "annotations": annotations, "categories": categories})


def _xml_text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _read_voc_xml(path: Path, class_ids: Mapping[str, int], include_difficult: bool) -> tuple[str, np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None
    if _UNSAFE_XML.search(raw):
        raise DataError(path, "DOCTYPE/ENTITY declarations are not allowed in annotation XML")
    try:
        root = ET.fromstring(raw)
    except (ET.ParseError, LookupError, ValueError) as exc:  # LookupError, ValueError: an unknown encoding
        raise DataError(path, f"malformed XML: {exc}") from None
    if root.tag != "annotation":
        raise DataError(path, f"root element is <{_short(root.tag)}>, expected a VOC <annotation>")
    filename = _xml_text(root, "filename")
    image_id = _image_id_from_name(filename or path.name, path, "<filename>: " if filename else "")
    rows = []
    for i, obj in enumerate(root.iter("object")):
        name = _xml_text(obj, "name")
        if name not in class_ids:
            raise DataError(path, f"object {i}: unknown class name {_short(name)}")
        difficult = _xml_text(obj, "difficult")
        if not include_difficult and difficult not in (None, "", "0"):
            continue
        bndbox = obj.find("bndbox")
        coords = [None if bndbox is None else _xml_text(bndbox, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        try:
            corners = [_number(float(v)) for v in coords]  # type: ignore[arg-type]
        except (TypeError, ValueError):
            corners = [None]
        if any(v is None for v in corners):
            raise DataError(path, f"object {i} ({name}): bndbox needs finite numbers xmin ymin xmax ymax")
        xmin, ymin, xmax, ymax = corners
        rows.append([xmin - 1, ymin - 1, xmax, ymax, class_ids[name]])
    return image_id, np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def read_voc_xml_boxes(
    path: str | Path, class_names: Sequence[str], *, include_difficult: bool = True
) -> dict[str, np.ndarray]:
    """VOC XML boxes from a folder of ``*.xml`` (or one file) as ``{image_id: N×5 float32}``.

    VOC corners are 1-based inclusive pixels, so ``x0 = xmin − 1`` and ``x1 = xmax`` (continuous coordinates).
    Box geometry (area, inside the image) is checked by :func:`validate_boxes`.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "Annotations").is_dir():
            path = path / "Annotations"
        files = sorted(p for p in path.glob("*.xml") if not p.name.startswith("."))  # macOS ._x.xml are not XML
        if not files:
            raise DataError(path, "folder holds no .xml annotation files")
    else:
        files = [_require_file(path)]
    class_ids = {str(n): i for i, n in enumerate(class_names)}
    result: dict[str, np.ndarray] = {}
    for file in files:
        image_id, rows = _read_voc_xml(file, class_ids, include_difficult)
        if image_id in result:
            raise DataError(file, f"image {image_id} is annotated by more than one XML file")
        result[image_id] = rows
    return result


# ---------------------------------------------------------------------------------------------- points


def read_points_json(path: str | Path) -> dict[str, np.ndarray]:
    """``{image_id: [[x, y, class_id], ...]}`` as N×3 float32 arrays."""
    data = _expect_mapping(_read_json(path), path, "{image_id: [[x, y, class_id], ...]}")
    points = {}
    for image_id, entries in data.items():
        _image_id(image_id, path)
        if not isinstance(entries, list):
            raise DataError(path, f"image {image_id}: expected a list of [x, y, class_id]")
        rows = []
        for j, entry in enumerate(entries):
            xy = [_number(v) for v in entry[:2]] if isinstance(entry, list) and len(entry) == 3 else [None]
            if any(v is None for v in xy):
                limit = f"x, y within ±{MAX_COORDINATE:.0f}"
                raise DataError(path, f"image {image_id}: point {j} {_short(entry)} is not [x, y, class_id] ({limit})")
            rows.append([*xy, _class_id(entry[2], path, f"image {image_id}, point {j}")])
        points[image_id] = np.asarray(rows, dtype=np.float32).reshape(-1, 3)
    return points


def write_points_json(path: str | Path, points: Mapping[str, np.ndarray]) -> None:
    """Write ``{image_id: [[x, y, class_id], ...]}`` (coordinates as ints when integral)."""
    out = {}
    for image_id, pts in points.items():
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        out[image_id] = [[_json_number(x), _json_number(y), int(c)] for x, y, c in arr]
    write_json(path, out)


# ------------------------------------------------------------------------------------------ validation


def _prefix(image_id: str | None) -> str:
    return f"image {image_id}: " if image_id is not None else ""


def _check_class_ids(ids: np.ndarray, num_classes: int, source: str | Path, image_id: str | None) -> None:
    ids = np.asarray(ids, dtype=np.float64)
    bad = ids[(ids != np.round(ids)) | (ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise DataError(source, f"{_prefix(image_id)}class id {bad[0]:g} outside 0..{num_classes - 1}")


def validate_points(
    points: np.ndarray,
    height: int,
    width: int,
    num_classes: int,
    source: str | Path,
    *,
    image_id: str | None = None,
) -> np.ndarray:
    """Check N×3 points (0 ≤ x ≤ W−1, 0 ≤ y ≤ H−1, integral ids in range); return a float32 copy."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.size == 0:
        return empty_points()
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise DataError(source, f"{_prefix(image_id)}points must be N×3 [x, y, class_id], got {pts.shape}")
    if not np.isfinite(pts).all():
        raise DataError(source, f"{_prefix(image_id)}points hold non-finite values")
    x, y = pts[:, 0], pts[:, 1]
    outside = (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)
    if outside.any():
        px, py = pts[np.argmax(outside), :2]
        raise DataError(
            source, f"{_prefix(image_id)}point ({px:.1f}, {py:.1f}) lies outside the {width}×{height} image"
        )
    _check_class_ids(pts[:, 2], num_classes, source, image_id)
    return pts.copy()


def validate_boxes(
    boxes: np.ndarray,
    height: int,
    width: int,
    num_classes: int,
    source: str | Path,
    *,
    image_id: str | None = None,
) -> np.ndarray:
    """Check N×5 boxes and return them clipped to the image: a box that reaches more than 1 px beyond it is clipped
    with a warning naming ``source``; one with no area inside it is an error."""
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return empty_boxes()
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise DataError(source, f"{_prefix(image_id)}boxes must be N×5 [x0, y0, x1, y1, c], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(source, f"{_prefix(image_id)}boxes hold non-finite values")

    def show(i: int) -> str:
        return "[" + ", ".join(f"{v:g}" for v in arr[i, :4]) + "]"

    empty = (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])
    if empty.any():
        raise DataError(source, f"{_prefix(image_id)}box {show(int(np.argmax(empty)))} has no area")
    _check_class_ids(arr[:, 4], num_classes, source, image_id)
    clipped = clip_boxes(arr, height, width)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        box = show(int(np.argmax(empty)))
        raise DataError(source, f"{_prefix(image_id)}box {box} has no area inside the {width}×{height} image")
    over = (arr[:, 0] < -1) | (arr[:, 1] < -1) | (arr[:, 2] > width + 1) | (arr[:, 3] > height + 1)
    if over.any():
        log.warning("%s: %sbox %s reaches outside the %d×%d image: clipped to it", source, _prefix(image_id),
                    show(int(np.argmax(over))), width, height)  # fmt: skip
    return clipped


def validate_tags(
    tags: np.ndarray | Sequence[int], num_classes: int, source: str | Path, *, image_id: str | None = None
) -> np.ndarray:
    """Check class ids are integers in 0..num_classes−1; sorted unique int64 array."""
    ids = np.asarray(tags, dtype=np.float64).reshape(-1)
    if not np.isfinite(ids).all():
        raise DataError(source, f"{_prefix(image_id)}tags hold non-finite values")
    _check_class_ids(ids, num_classes, source, image_id)
    return np.unique(ids.astype(np.int64))
