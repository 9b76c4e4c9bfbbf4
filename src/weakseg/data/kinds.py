"""Label kinds: each kind of label a dataset can carry, registered in one place with everything the data layer does
with it, so datasets, transforms and batches loop over :data:`KINDS` instead of naming kinds.

A kind has one of two shapes:

* :class:`MapKind`: a folder of per-image PNG label maps (255 = unlabelled), carried in ``Sample.maps`` under its
  map's name: the full ``mask`` and the ``scribbles``. Registering it registers its map, which transforms resample
  and batches stack like every registered map.
* :class:`TableKind`: one file of per-image arrays, carried in the :class:`Sample` field of the kind's name:
  ``tags``, ``boxes`` and ``points`` (a new table kind needs its field there). It brings its reader, validator,
  geometric transform and tensoriser.

Every kind but ``mask`` is a weak label, found through its ``data.<kind>`` entry (where
:class:`~weakseg.data.dataset.DataConfig` has one) or its file in a ``labels`` folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weakseg.data import formats
from weakseg.data.classes import IGNORE_INDEX, ClassSet
from weakseg.data.sample import Sample, register_map


@dataclass(frozen=True)
class Warp:
    """The geometry of one joint augmentation: a rescale by ``scale`` (x, y) to ``size`` (width, height), then a
    square ``crop`` (x0, y0, side) when set, then a horizontal mirror of an output ``mirror`` pixels wide when set."""

    scale: tuple[float, float]
    size: tuple[int, int]
    crop: tuple[int, int, int] | None
    mirror: int | None


@dataclass(frozen=True, kw_only=True)
class LabelKind:
    """A kind of label: ``name`` (as in ``data.<name>``, ``kinds`` and ``batch["has"]``) and ``file``, its file or
    folder in a ``derive-labels`` output folder (None for the full mask, read from ``data.masks``)."""

    name: str
    file: str | None

    @property
    def weak(self) -> bool:
        """Weak labels are the kinds a labels folder holds: all but the full mask."""
        return self.file is not None


@dataclass(frozen=True, kw_only=True)
class MapKind(LabelKind):
    """A folder of ``<image id>.png`` label maps, carried in ``Sample.maps[map]``.

    ``missing`` is the error when the folder is not there; with ``every_image`` each image must have its file (a
    missing one is a data error), otherwise an image without one lacks the kind.
    """

    map: str
    missing: str
    every_image: bool = False

    def value(self, sample: Sample) -> np.ndarray | None:
        """The sample's map of this kind, or None when it has none."""
        return sample.maps.get(self.map)

    def load(self, path: Path, size: tuple[int, int], class_set: ClassSet) -> np.ndarray:
        """One image's label map, checked against its ``size`` (height, width) and the class set."""
        palette = class_set.palette_array()
        return formats.read_label_map(path, num_classes=class_set.num_classes, size=size, palette=palette)

    def labelled(self, path: Path, class_set: ClassSet) -> bool:
        """An image with a label-map file has labels of this kind."""
        return True

    def pixels(self, path: Path, class_set: ClassSet) -> int:
        """The labelled (not ignored) pixels of one image's label map."""
        return int((formats.read_label_map(path) != class_set.ignore_index).sum())


@dataclass(frozen=True, kw_only=True)
class TableKind(LabelKind):
    """One file of per-image arrays, carried in the :class:`Sample` field named ``name``.

    * ``read(path, class_set)``: ``{image_id: array}`` of the whole file;
    * ``validate(array, height, width, num_classes, source, *, image_id)``: the checked array an image's sample
      carries (a :class:`~weakseg.errors.DataError` naming ``source`` and the image when it is wrong);
    * ``labelled(array, class_set)``: whether the array counts as labels where a dataset requires the kind;
    * ``pixels(array, class_set)``: the labelled pixels it counts for in a labelled-pixel density;
    * ``warp(array, warp)``: the array under an augmentation's geometry;
    * ``to_tensor(array or None, num_classes)``: its batch entry, ``ragged`` ones batched as per-image lists.
    """

    read: Callable[[Path, ClassSet], dict[str, np.ndarray]]
    validate: Callable[..., np.ndarray]
    labelled: Callable[[np.ndarray, ClassSet], bool]
    pixels: Callable[[np.ndarray, ClassSet], int]
    warp: Callable[[np.ndarray, Warp], np.ndarray]
    to_tensor: Callable[[np.ndarray | None, int], torch.Tensor]
    ragged: bool

    def value(self, sample: Sample) -> np.ndarray | None:
        """The sample's labels of this kind, or None when it has none."""
        return getattr(sample, self.name)


# Every registered label kind by name, in registration order (``mask`` first, then the weak kinds).
KINDS: dict[str, MapKind | TableKind] = {}


def register_kind(kind: MapKind | TableKind) -> None:
    """Register ``kind`` (and the map of a :class:`MapKind`, filled with the ignore index)."""
    if KINDS.get(kind.name, kind) != kind:
        raise ValueError(f"label kind {kind.name!r} is already registered")
    if isinstance(kind, MapKind):
        register_map(kind.map, IGNORE_INDEX)
    KINDS[kind.name] = kind


def map_kinds() -> list[MapKind]:
    """The registered kinds carried in ``Sample.maps``, in registration order."""
    return [kind for kind in KINDS.values() if isinstance(kind, MapKind)]


def table_kinds() -> list[TableKind]:
    """The registered kinds carried in :class:`Sample` fields, in registration order."""
    return [kind for kind in KINDS.values() if isinstance(kind, TableKind)]


def weak_kinds(sample: Sample) -> tuple[str, ...]:
    """The weak-label kinds ``sample`` carries, in registration order."""
    return tuple(kind.name for kind in KINDS.values() if kind.weak and kind.value(sample) is not None)


# ------------------------------------------------------------------------------------------------ tags


def _validate_tags(
    tags: np.ndarray, height: int, width: int, num_classes: int, source: Path, *, image_id: str
) -> np.ndarray:
    return formats.validate_tags(tags, num_classes, source, image_id=image_id)


def _tags_tensor(tags: np.ndarray | None, num_classes: int) -> torch.Tensor:
    """Multi-hot float32 vector of the tagged classes (all zero without tags)."""
    out = torch.zeros(num_classes, dtype=torch.float32)
    if tags is not None:
        out[torch.as_tensor(tags, dtype=torch.int64)] = 1.0
    return out


# ----------------------------------------------------------------------------------------------- boxes


def _read_boxes(path: Path, class_set: ClassSet) -> dict[str, np.ndarray]:
    """A COCO file, or a folder of VOC XML files."""
    if path.is_dir():
        return formats.read_voc_xml_boxes(path, class_set.names)
    return formats.read_coco_boxes(path)


def _warp_boxes(boxes: np.ndarray, warp: Warp) -> np.ndarray:
    """Continuous boxes rescaled, cropped (clipped to the crop, dropped with no area left) and mirrored."""
    if warp.scale != (1.0, 1.0):
        boxes = boxes.copy()
        boxes[:, [0, 2]] *= warp.scale[0]
        boxes[:, [1, 3]] *= warp.scale[1]
    if warp.crop is not None:
        x0, y0, side = warp.crop
        out = boxes.copy()
        out[:, [0, 2]] = np.clip(boxes[:, [0, 2]] - x0, 0, side)
        out[:, [1, 3]] = np.clip(boxes[:, [1, 3]] - y0, 0, side)
        boxes = out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]
    if warp.mirror is not None:
        boxes = boxes.copy()
        boxes[:, [0, 2]] = warp.mirror - boxes[:, [2, 0]]
    return boxes


# ---------------------------------------------------------------------------------------------- points


def _warp_points(points: np.ndarray, warp: Warp) -> np.ndarray:
    """Pixel-centre points rescaled (kept inside the new image), cropped (those whose pixel leaves the crop dropped,
    the rest clipped inside) and mirrored."""
    if warp.scale != (1.0, 1.0):
        (sx, sy), (width, height) = warp.scale, warp.size
        scaled = points.copy()
        scaled[:, 0] = np.clip((points[:, 0] + 0.5) * sx - 0.5, 0, width - 1)
        scaled[:, 1] = np.clip((points[:, 1] + 0.5) * sy - 0.5, 0, height - 1)
        points = scaled
    if warp.crop is not None:
        x0, y0, side = warp.crop
        xy = points[:, :2] - np.array([x0, y0], dtype=points.dtype)
        keep = np.all((xy >= -0.5) & (xy < side - 0.5), axis=1)
        points = points[keep].copy()
        points[:, :2] = np.clip(xy[keep], 0, side - 1)
    if warp.mirror is not None:
        points = points.copy()
        points[:, 0] = warp.mirror - 1 - points[:, 0]
    return points


def _rows_tensor(columns: int) -> Callable[[np.ndarray | None, int], torch.Tensor]:
    """The tensoriser of an N×``columns`` float table (0×``columns`` when absent)."""

    def to_tensor(rows: np.ndarray | None, num_classes: int) -> torch.Tensor:
        return torch.zeros(0, columns) if rows is None else torch.from_numpy(rows).float()

    return to_tensor


def _unmoved(array: np.ndarray, warp: Warp) -> np.ndarray:
    return array


register_kind(MapKind(name="mask", file=None, map="mask", missing="mask folder not found", every_image=True))
register_kind(
    TableKind(
        name="tags",
        file="tags.json",
        read=lambda path, class_set: formats.read_tags_json(path),
        validate=_validate_tags,
        labelled=lambda tags, class_set: len(tags) > 0 or class_set.background is not None,
        pixels=lambda tags, class_set: 0,
        warp=_unmoved,
        to_tensor=_tags_tensor,
        ragged=False,
    )
)
register_kind(
    TableKind(
        name="boxes",
        file="boxes_coco.json",
        read=_read_boxes,
        validate=formats.validate_boxes,
        labelled=lambda boxes, class_set: True,
        pixels=lambda boxes, class_set: 0,
        warp=_warp_boxes,
        to_tensor=_rows_tensor(5),
        ragged=True,
    )
)
register_kind(
    TableKind(
        name="points",
        file="points.json",
        read=lambda path, class_set: formats.read_points_json(path),
        validate=formats.validate_points,
        labelled=lambda points, class_set: len(points) > 0,
        pixels=lambda points, class_set: len(points),
        warp=_warp_points,
        to_tensor=_rows_tensor(3),
        ragged=True,
    )
)
register_kind(
    MapKind(
        name="scribbles",
        file="scribbles",
        map="scribble",
        missing="scribble folder not found (set data.scribbles or data.labels)",
    )
)
