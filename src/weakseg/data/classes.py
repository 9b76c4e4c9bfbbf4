"""Class sets: names, palette, background and ignore ids. VOC and CamVid are built in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from weakseg.errors import DataError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassSet:
    """A list of class names with one palette colour each.

    ``background`` is the id of the background class (0 for VOC) or ``None`` where the set has none (CamVid).
    Pixel value ``ignore_index`` marks void / unlabelled pixels in masks and scribbles.
    """

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    background: int | None = 0
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"class set {self.name!r}: {len(self.names)} names but {len(self.palette)} colours")
        if not 0 < len(self.names) < self.ignore_index:
            raise ValueError(f"class set {self.name!r}: needs 1..{self.ignore_index - 1} classes")
        if self.background is not None and not 0 <= self.background < len(self.names):
            raise ValueError(f"class set {self.name!r}: background id {self.background} out of range")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette_array(self) -> np.ndarray:
        """The palette as a 256×3 uint8 array (unused entries black, ``ignore_index`` white)."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        pal[self.ignore_index] = 255
        return pal

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "background": self.background,
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "class set") -> ClassSet:
        """A class set from ``{names, palette, background, ignore_index, name}``; a DataError naming ``source``."""
        names, palette = d.get("names"), d.get("palette")
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise DataError(source, "'names' must be a list of strings (quote names that YAML reads as numbers)")
        if len(set(names)) != len(names):
            raise DataError(source, "class names must be unique")
        if not isinstance(palette, list | tuple) or not all(_is_colour(c) for c in palette):
            raise DataError(source, "'palette' must be a list of [r, g, b] colours with values in 0..255")
        background, ignore_index = d.get("background", 0), d.get("ignore_index", IGNORE_INDEX)
        if background is not None and not _is_int(background):
            raise DataError(source, f"'background' must be a class id or null, got {background!r}")
        if not _is_int(ignore_index) or not 0 <= ignore_index <= 255:
            raise DataError(source, f"'ignore_index' must be an integer in 0..255, got {ignore_index!r}")
        try:
            return cls(
                name=str(d.get("name", source)),
                names=tuple(names),
                palette=tuple(tuple(c) for c in palette),
                background=background,
                ignore_index=ignore_index,
            )
        except ValueError as exc:
            raise DataError(source, f"invalid class set: {exc}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_colour(value: object) -> bool:
    return isinstance(value, list | tuple) and len(value) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in value)


def _voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved class id)."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


VOC = ClassSet(
    name="voc",
    names=(
        "background",
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ),
    palette=_voc_palette(21),
    background=0,
)

CAMVID = ClassSet(
    name="camvid",
    names=(
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "signsymbol",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    ),
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
    background=None,
)

BUILTIN_CLASS_SETS: dict[str, ClassSet] = {"voc": VOC, "camvid": CAMVID}


def get_class_set(spec: str | dict | ClassSet) -> ClassSet:
    """A built-in class set by name (``voc``, ``camvid``), a dict, or a YAML/JSON file with names and palette."""
    if isinstance(spec, ClassSet):
        return spec
    if isinstance(spec, dict):
        return ClassSet.from_dict(spec)
    if spec in BUILTIN_CLASS_SETS:
        return BUILTIN_CLASS_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise DataError(spec, f"not a built-in class set ({', '.join(BUILTIN_CLASS_SETS)}) nor a readable file")
    try:
        text = path.read_text(encoding="utf-8")
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DataError(path, f"cannot parse class set: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise DataError(path, "cannot parse class set: nested too deeply") from None
    if not isinstance(d, dict):
        raise DataError(path, "class set file must hold a mapping with names and palette")
    return ClassSet.from_dict(d, source=str(path))
