"""One training/evaluation record: an image, its per-pixel maps (a full mask, scribbles, maps methods derive) and
any subset of the other weak labels.

Coordinate conventions, shared by every reader, simulator and transform:

* ``points``: float32 array N×3 of ``[x, y, class_id]``; ``x`` is the column and ``y`` the row of the pixel
  *centre* (pixel (r, c) has centre (x=c, y=r)); valid points satisfy 0 ≤ x ≤ W−1 and 0 ≤ y ≤ H−1.
* ``boxes``: float32 array N×5 of ``[x0, y0, x1, y1, class_id]`` in continuous coordinates where pixel column c
  spans [c, c+1): a COCO ``[x, y, w, h]`` box is ``[x, y, x+w, y+h]``. Valid boxes have x1 > x0, y1 > y0 and lie in
  [0, W]×[0, H].
* ``tags``: sorted int64 array of the class ids present (for sets with a background class, background is implied
  and not listed).
* ``maps``: H×W arrays by name, each registered once with its fill value (:func:`register_map`), the value of
  augmentation padding and of a map a sample lacks in a batch. Transforms, tensor conversion and collation carry
  every registered map alike. The label maps ``mask`` and ``scribble`` (uint8, 255 = ignore / unlabelled) are
  registered with their label kinds (:mod:`weakseg.data.kinds`); methods register the maps they derive, such as
  ``regions`` (:mod:`weakseg.pseudo.oversegment`) and ``blots`` (:mod:`weakseg.pseudo.point_blots`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from weakseg.errors import DataError

# The weak-label kinds weakseg simulates and mixes and its methods accept, in their canonical order; each is
# registered with its reader, validator, transform and tensoriser in weakseg.data.kinds.
LABEL_KINDS = ("tags", "boxes", "points", "scribbles")
# Every registered per-pixel map (``Sample.maps``, ``batch[name]``) and its fill value.
MAP_FILLS: dict[str, int] = {}


def register_map(name: str, fill: int) -> None:
    """Register the per-pixel map ``name`` with its ``fill`` value (padding, and the value where a sample lacks it).

    Registering a map again with the same fill changes nothing; with another fill it is an error.
    """
    if MAP_FILLS.setdefault(name, fill) != fill:
        raise ValueError(f"map {name!r} is registered with fill {MAP_FILLS[name]}, not {fill}")


@dataclass
class Sample:
    image_id: str
    image: np.ndarray  # H×W×3 uint8 RGB
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # H×W registered maps by name
    tags: np.ndarray | None = None
    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unregistered = sorted(self.maps.keys() - MAP_FILLS.keys())
        if unregistered:
            raise ValueError(f"maps {unregistered} are not registered (weakseg.data.sample.register_map)")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def replace(self, **changes) -> Sample:
        return replace(self, **changes)

    def with_maps(self, **maps: np.ndarray) -> Sample:
        """A copy with these maps added (or replacing maps of the same name)."""
        return replace(self, maps={**self.maps, **maps})


def sample_classes(sample: Sample, ignore_index: int = 255) -> np.ndarray:
    """The classes a sample's weak labels name: its tags when it has them, else the union of its boxes', points'
    and scribble's classes (sorted int64, background included where the labels mark it)."""
    if sample.tags is not None:
        return np.asarray(sample.tags, dtype=np.int64)
    found: set[int] = set()
    for table, column in ((sample.boxes, 4), (sample.points, 2)):
        if table is not None:
            found.update(int(c) for c in table[:, column])
    if "scribble" in sample.maps:
        found.update(int(c) for c in np.unique(sample.maps["scribble"]) if c != ignore_index)
    return np.array(sorted(found), dtype=np.int64)


def empty_points() -> np.ndarray:
    return np.zeros((0, 3), dtype=np.float32)


def empty_boxes() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


def box_pixel_slices(box: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels whose centres lie inside a continuous box (at least one pixel)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    c0 = int(np.clip(np.floor(x0 + 0.5), 0, width - 1))
    r0 = int(np.clip(np.floor(y0 + 0.5), 0, height - 1))
    c1 = int(np.clip(np.ceil(x1 - 0.5), c0 + 1, width))
    r1 = int(np.clip(np.ceil(y1 - 0.5), r0 + 1, height))
    return slice(r0, r1), slice(c0, c1)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes clipped to the [0, W]×[0, H] image rectangle (class ids untouched)."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


MAX_IMAGE_ID_BYTES = 200  # leaves room for the suffixes of output files within the usual 255-byte name limit


def image_id_problem(image_id: object) -> str | None:
    """Why ``image_id`` cannot name an output file (``<folder>/<image_id>.png``), or None when it can.

    An id must be a non-empty, printable string without path separators that does not start with ``.`` (so neither
    ``..`` nor a hidden file), at most ``MAX_IMAGE_ID_BYTES`` bytes in UTF-8.
    """
    if not isinstance(image_id, str) or not image_id:
        return f"image id {image_id!r} is not a safe file name: it is empty or not a string"
    if "/" in image_id or "\\" in image_id:
        reason = "it holds a path separator"
    elif image_id.startswith("."):
        reason = "it starts with '.'"
    elif not image_id.isprintable():
        reason = "it holds a control, format or invalid character"
    elif len(image_id.encode("utf-8")) > MAX_IMAGE_ID_BYTES:
        reason = f"it is longer than {MAX_IMAGE_ID_BYTES} bytes"
    else:
        return None
    shown = image_id if len(image_id) <= 40 else image_id[:37] + "..."
    return f"image id {shown!r} is not a safe file name: {reason}"


def check_image_id(image_id: str, source: object = None) -> str:
    """Reject image ids that could escape an output folder (or fail) when used as file names."""
    problem = image_id_problem(image_id)
    if problem is not None:
        raise DataError(source, problem)
    return image_id
