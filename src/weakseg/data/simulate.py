"""Simulation of weak labels from full masks (``weakseg derive-labels``).

Everything is deterministic from ``LabelProtocol.seed`` and independent of image order: each image and label
kind draws from ``np.random.default_rng([seed, crc32(image_id), crc32(kind)])``, so adding or removing a kind
or an image never changes the labels of the others. Ignore pixels (255) never receive a label. Connected
components use 8-connectivity.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skimage.morphology import skeletonize
from tqdm import tqdm

from weakseg.data.classes import ClassSet
from weakseg.data.formats import (
    read_coco_boxes,
    read_points_json,
    read_tags_json,
    validate_boxes,
    write_coco_boxes,
    write_json,
    write_label_png,
    write_points_json,
    write_tags_json,
)
from weakseg.data.kinds import KINDS
from weakseg.data.sample import LABEL_KINDS, box_pixel_slices, check_image_id, empty_boxes, empty_points
from weakseg.errors import ConfigError, DataError
from weakseg.utils import stable_int

POINTS_MODES = ("component", "box-centres")
PMP_BACKGROUND_POINTS = 4
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class LabelProtocol:
    """How weak labels are simulated from full masks.

    * ``min_component_area``: components with fewer pixels get no box, point or scribble.
    * ``points_mode``: ``"component"`` puts one point at the distance-transform maximum of every component;
      ``"box-centres"`` puts one point at every box centre plus background points outside all boxes (PMP).
    * ``background_points``: ``"component"`` mode: ``None`` = one per background component, ``k`` = one in
      each of the ``k`` largest background components; ``"box-centres"`` mode: per object (``None`` = 4, PMP).
    * ``scribble_length_fraction``: share of each component's skeleton kept as one connected stroke.
    * ``scribble_width``: stroke diameter in pixels (the stroke is clipped to its component).
    * ``include_background``: the background class gets points and strokes too. Class sets without a
      background (CamVid) treat every class as an object class.
    """

    seed: int = 0
    min_component_area: int = 16
    points_mode: str = "component"
    background_points: int | None = None
    scribble_length_fraction: float = 0.5
    scribble_width: int = 3
    include_background: bool = True

    def __post_init__(self) -> None:
        if self.points_mode not in POINTS_MODES:
            raise ConfigError(f"points_mode must be one of {POINTS_MODES}, got {self.points_mode!r}")
        if self.min_component_area < 1:
            raise ConfigError(f"min_component_area must be ≥ 1, got {self.min_component_area}")
        if self.background_points is not None and self.background_points < 0:
            raise ConfigError(f"background_points must be ≥ 0, got {self.background_points}")
        if not 0 < self.scribble_length_fraction <= 1:
            fraction = self.scribble_length_fraction
            raise ConfigError(f"scribble_length_fraction must be in (0, 1], got {fraction}")
        if self.scribble_width < 1:
            raise ConfigError(f"scribble_width must be ≥ 1, got {self.scribble_width}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, kinds: Sequence[str] = LABEL_KINDS, *, given_boxes: bool = False) -> str:
        """One line naming how each kind was made, for benchmark reports."""
        bg = " + background" if self.include_background else ""
        parts = {
            "tags": "tags: classes present in the mask",
            "boxes": "boxes: given box file" if given_boxes else "boxes: 1 per connected component",
            "scribbles": (
                f"scribbles: {self.scribble_length_fraction:.0%} of each component's skeleton, "
                f"{self.scribble_width} px wide{bg}"
            ),
        }
        if self.points_mode == "component":
            n_bg = "1 per component" if self.background_points is None else f"≤{self.background_points}"
            parts["points"] = "points: 1 per connected component (distance-transform maximum)" + (
                f" + background ({n_bg})" if self.include_background else ""
            )
        else:
            n_bg = PMP_BACKGROUND_POINTS if self.background_points is None else self.background_points
            parts["points"] = "points: box centres" + (
                f" + {n_bg} background points per object outside boxes" if self.include_background else ""
            )
        described = "; ".join(parts[k] for k in LABEL_KINDS if k in kinds)
        return f"{described}; seed {self.seed}, min area {self.min_component_area}"


def image_rng(seed: int, image_id: str, kind: str) -> np.random.Generator:
    """The generator of one image and label kind."""
    return np.random.default_rng([seed, stable_int(image_id), stable_int(kind)])


def _object_classes(class_set: ClassSet) -> set[int]:
    return set(range(class_set.num_classes)) - {class_set.background}


def _components(
    mask: np.ndarray, class_ids: Iterable[int], min_area: int
) -> Iterator[tuple[int, tuple[slice, slice], np.ndarray]]:
    """(class id, bounding slices, boolean crop of the component) for each large enough component."""
    present = set(np.unique(mask).tolist())
    for class_id in sorted(present & set(class_ids)):
        labels, _ = ndimage.label(mask == class_id, structure=_EIGHT)
        areas = np.bincount(labels.ravel())
        for k, sl in enumerate(ndimage.find_objects(labels), 1):
            if sl is not None and areas[k] >= min_area:
                yield class_id, sl, labels[sl] == k


def derive_tags(mask: np.ndarray, class_set: ClassSet) -> np.ndarray:
    """The class ids present in the mask, without background and ignore."""
    ids = np.unique(mask)
    return ids[np.isin(ids, sorted(_object_classes(class_set)))].astype(np.int64)


def derive_boxes(mask: np.ndarray, class_set: ClassSet, protocol: LabelProtocol) -> np.ndarray:
    """N×5 tight boxes, one per component of each object class (rows r0..r1 → y0 = r0, y1 = r1 + 1)."""
    rows = [
        [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop, c]
        for c, sl, _ in _components(mask, _object_classes(class_set), protocol.min_component_area)
    ]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5) if rows else empty_boxes()


def _interior_point(component: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(row, col) of a distance-transform maximum of a boolean crop, ties broken at random."""
    dist = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    best = np.flatnonzero(dist == dist.max())
    r, c = np.unravel_index(best[rng.integers(best.size)], component.shape)
    return int(r), int(c)


def derive_points(
    mask: np.ndarray, class_set: ClassSet, protocol: LabelProtocol, rng: np.random.Generator
) -> np.ndarray:
    """N×3 points, one at the distance-transform maximum of each component (``"component"`` mode).

    Background components get points when ``include_background`` (all of them, or those of the
    ``background_points`` largest ones).
    """
    background = class_set.background
    classes = _object_classes(class_set)
    if protocol.include_background and background is not None:
        classes.add(background)
    found = [
        (c, int(comp.sum()), sl, _interior_point(comp, rng))
        for c, sl, comp in _components(mask, classes, protocol.min_component_area)
    ]
    if protocol.background_points is not None:
        bg = sorted((i for i, f in enumerate(found) if f[0] == background), key=lambda i: -found[i][1])
        drop = set(bg[protocol.background_points :])
        found = [f for i, f in enumerate(found) if i not in drop]
    rows = [[sl[1].start + c, sl[0].start + r, cls] for cls, _, sl, (r, c) in found]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 3) if rows else empty_points()


def derive_points_from_boxes(
    boxes: np.ndarray,
    mask: np.ndarray,
    class_set: ClassSet,
    protocol: LabelProtocol,
    rng: np.random.Generator,
) -> np.ndarray:
    """PMP points: the centre pixel of every box with the box's class, plus background points.

    As in PMP, a centre is kept with the box's class even when the mask disagrees there (e.g. a ring-shaped
    object). ``background_points`` (default 4) per object are drawn without replacement among non-ignore
    pixels outside every box (fewer when not enough exist; none when the class set has no background).
    """
    height, width = mask.shape
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    cx = np.clip(np.floor((boxes[:, 0] + boxes[:, 2]) / 2), 0, width - 1)
    cy = np.clip(np.floor((boxes[:, 1] + boxes[:, 3]) / 2), 0, height - 1)
    centres = np.stack([cx, cy, boxes[:, 4]], axis=1)
    per_object = PMP_BACKGROUND_POINTS if protocol.background_points is None else protocol.background_points
    if not protocol.include_background or class_set.background is None or per_object == 0 or len(boxes) == 0:
        return centres.astype(np.float32)
    free = mask != class_set.ignore_index
    for box in boxes:
        free[box_pixel_slices(box, height, width)] = False
    candidates = np.flatnonzero(free)
    chosen = rng.choice(candidates, size=min(per_object * len(boxes), candidates.size), replace=False)
    r, c = np.unravel_index(np.sort(chosen), mask.shape)
    bg = np.stack([c, r, np.full(r.size, class_set.background)], axis=1)
    return np.concatenate([centres, bg]).astype(np.float32)


def derive_image_points(
    image_id: str, mask: np.ndarray, class_set: ClassSet, protocol: LabelProtocol, boxes: np.ndarray | None
) -> np.ndarray:
    """An image's points under ``protocol``, from its own random stream: one per component, or (``"box-centres"``)
    from ``boxes`` (``None``: no boxes)."""
    rng = image_rng(protocol.seed, image_id, "points")
    if protocol.points_mode == "component":
        return derive_points(mask, class_set, protocol, rng)
    return derive_points_from_boxes(empty_boxes() if boxes is None else boxes, mask, class_set, protocol, rng)


def _disk(diameter: int) -> np.ndarray:
    """A boolean disk footprint of the given diameter in pixels (3 → full 3×3)."""
    centre = (diameter - 1) / 2
    yy, xx = np.mgrid[:diameter, :diameter]
    return (yy - centre) ** 2 + (xx - centre) ** 2 <= (diameter / 2) ** 2


def _skeleton_stroke(component: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A connected stretch of the component's skeleton holding ``fraction`` of its pixels.

    The skeleton is walked depth-first along 8-neighbours from a random endpoint (a random pixel when it has
    no endpoint); every prefix of a depth-first order is connected and, on a branch-free skeleton, a path.
    """
    skeleton = skeletonize(component)
    if not skeleton.any():
        skeleton = component
    index = np.full(np.add(skeleton.shape, 2), -1, dtype=np.int64)
    rr, cc = np.nonzero(skeleton)
    n = rr.size
    index[rr + 1, cc + 1] = np.arange(n)
    src, dst = [], []
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
        nb = index[rr + 1 + dr, cc + 1 + dc]
        src.append(np.arange(n)[nb >= 0])
        dst.append(nb[nb >= 0])
    src_all, dst_all = np.concatenate(src), np.concatenate(dst)
    graph = sparse.coo_matrix((np.ones(src_all.size), (src_all, dst_all)), shape=(n, n)).tocsr()
    graph = graph + graph.T
    degree = np.diff(graph.indptr)
    ends = np.flatnonzero(degree == 1)
    start = rng.choice(ends) if ends.size else rng.integers(n)
    order = csgraph.depth_first_order(graph, int(start), directed=False, return_predecessors=False)
    keep = order[: max(1, round(fraction * n))]
    stroke = np.zeros_like(component)
    stroke[rr[keep], cc[keep]] = True
    return stroke


def derive_scribbles(
    mask: np.ndarray, class_set: ClassSet, protocol: LabelProtocol, rng: np.random.Generator
) -> np.ndarray:
    """An H×W uint8 scribble map (``ignore_index`` = unlabelled): one skeleton stroke per component."""
    classes = _object_classes(class_set)
    if protocol.include_background and class_set.background is not None:
        classes.add(class_set.background)
    scribble = np.full(mask.shape, class_set.ignore_index, dtype=np.uint8)
    footprint = _disk(protocol.scribble_width)
    for class_id, sl, comp in _components(mask, classes, protocol.min_component_area):
        stroke = _skeleton_stroke(comp, protocol.scribble_length_fraction, rng)
        stroke = ndimage.binary_dilation(stroke, structure=footprint) & comp
        scribble[sl][stroke] = class_id
    return scribble


def derive_labels(
    items: Iterable[tuple[str, np.ndarray]],
    class_set: ClassSet,
    out_dir: str | Path,
    kinds: Sequence[str],
    protocol: LabelProtocol,
    given_boxes: Mapping[str, np.ndarray] | None = None,
    progress: bool = True,
    given_boxes_source: str | Path = "given boxes",
) -> dict:
    """Simulate the requested weak-label kinds for every (image_id, mask) and write them into ``out_dir``.

    Writes ``tags.json``, ``boxes_coco.json``, ``points.json``, ``scribbles/<image_id>.png`` (as requested)
    and ``protocol.json``; returns the summary (counts per kind and labelled-pixel fractions, pooled over
    images).
    ``given_boxes`` replaces derived boxes (for the boxes file and for ``"box-centres"`` points); images it
    lacks have no boxes. ``given_boxes_source`` (their file) is named in errors about them.
    """
    unknown = set(kinds) - set(LABEL_KINDS)
    if unknown or not kinds:
        raise ConfigError(f"kinds must be a non-empty subset of {', '.join(LABEL_KINDS)}, got {list(kinds)}")
    out_dir = Path(out_dir)
    need_boxes = "boxes" in kinds or ("points" in kinds and protocol.points_mode == "box-centres")
    tags: dict[str, np.ndarray] = {}
    boxes: dict[str, np.ndarray] = {}
    points: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    totals = {"pixels": 0, "scribble_pixels": 0}
    for image_id, mask in tqdm(items, desc="derive-labels", unit="img", disable=not progress):
        check_image_id(image_id, "derive-labels")
        if image_id in sizes:
            raise DataError(None, f"image id {image_id!r} appears twice")
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise DataError(None, f"image {image_id}: mask must be H×W, got shape {mask.shape}")
        bad = (mask >= class_set.num_classes) & (mask != class_set.ignore_index)
        if bad.any():
            bad_id = int(mask[bad][0])
            raise DataError(None, f"image {image_id}: mask holds class id {bad_id} outside the class set")
        mask = mask.astype(np.uint8)
        sizes[image_id] = mask.shape
        totals["pixels"] += mask.size
        if "tags" in kinds:
            tags[image_id] = derive_tags(mask, class_set)
        if need_boxes:
            if given_boxes is None:
                boxes[image_id] = derive_boxes(mask, class_set, protocol)
            else:
                given = given_boxes.get(image_id, empty_boxes())
                boxes[image_id] = validate_boxes(
                    given, *mask.shape, class_set.num_classes, given_boxes_source, image_id=image_id
                )
        if "points" in kinds:
            points[image_id] = derive_image_points(image_id, mask, class_set, protocol, boxes.get(image_id))
        if "scribbles" in kinds:
            rng = image_rng(protocol.seed, image_id, "scribbles")
            scribble = derive_scribbles(mask, class_set, protocol, rng)
            totals["scribble_pixels"] += int(np.count_nonzero(scribble != class_set.ignore_index))
            write_label_png(out_dir / KINDS["scribbles"].file / f"{image_id}.png", scribble, class_set.palette_array())

    n = len(sizes)
    pixels = max(1, totals["pixels"])
    summary: dict = {"images": n}
    if "tags" in kinds:
        total = int(sum(len(t) for t in tags.values()))
        summary["tags"] = {"total": total, "per_image": total / max(1, n)}
        write_tags_json(out_dir / KINDS["tags"].file, {k: v.tolist() for k, v in tags.items()})
    if "boxes" in kinds:
        total = int(sum(len(b) for b in boxes.values()))
        source = "derived" if given_boxes is None else "given"
        summary["boxes"] = {"total": total, "per_image": total / max(1, n), "source": source}
        write_coco_boxes(out_dir / KINDS["boxes"].file, boxes, sizes, class_set.names)
    if "points" in kinds:
        total = int(sum(len(p) for p in points.values()))
        summary["points"] = {"total": total, "per_image": total / max(1, n), "labelled_pixel_fraction": total / pixels}
        write_points_json(out_dir / KINDS["points"].file, points)
    if "scribbles" in kinds:
        summary["scribbles"] = {
            "labelled_pixels": totals["scribble_pixels"],
            "labelled_pixel_fraction": totals["scribble_pixels"] / pixels,
        }
    record = {
        **protocol.to_dict(),
        "kinds": [k for k in LABEL_KINDS if k in kinds],
        "class_set": class_set.name,
        "description": protocol.describe(kinds, given_boxes=given_boxes is not None),
        "summary": summary,
    }
    write_json(out_dir / "protocol.json", record)
    return summary


def mix_labels(source: str | Path, out_dir: str | Path, kinds: Sequence[str], seed: int = 0) -> dict[str, str]:
    """A mixed-supervision copy of a ``derive-labels`` folder: every image keeps the labels of one kind only.

    The images (those of ``source``'s label files) are shuffled with ``seed`` and dealt to ``kinds`` in turn, so the
    kinds split them evenly. Writes the kept tags / boxes / points / scribbles in the same layout, plus
    ``mixed.json`` (image id → kind); returns that assignment.
    """
    source, out_dir = Path(source), Path(out_dir)
    unknown = set(kinds) - set(LABEL_KINDS)
    if unknown or not kinds:
        raise ConfigError(f"kinds must be a non-empty subset of {', '.join(LABEL_KINDS)}, got {list(kinds)}")
    files = {kind: source / KINDS[kind].file for kind in LABEL_KINDS if kind in kinds}
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        raise DataError(source, f"mixed labels need {', '.join(missing)}")
    tags = read_tags_json(files["tags"]) if "tags" in files else {}
    points = read_points_json(files["points"]) if "points" in files else {}
    boxes = read_coco_boxes(files["boxes"]) if "boxes" in files else {}  # checks the file: one id per image
    ids: set[str] = set(tags) | set(points) | set(boxes)
    if "scribbles" in files:
        ids |= {
            check_image_id(path.stem, path)
            for path in files["scribbles"].glob("*.png")
            if not path.name.startswith(".")  # hidden files (macOS ._x.png) are not scribbles
        }
    order = sorted(ids)
    rng = np.random.default_rng([seed, stable_int("mixed")])
    assignment = {order[i]: kinds[n % len(kinds)] for n, i in enumerate(rng.permutation(len(order)))}
    chosen = {kind: {i for i, k in assignment.items() if k == kind} for kind in kinds}
    if "tags" in files:
        write_tags_json(
            out_dir / files["tags"].name, {i: tags[i].tolist() for i in sorted(chosen["tags"]) if i in tags}
        )
    if "points" in files:
        write_points_json(
            out_dir / files["points"].name, {i: points[i] for i in sorted(chosen["points"]) if i in points}
        )
    if "boxes" in files:
        coco = json.loads(files["boxes"].read_text(encoding="utf-8-sig"))
        keep = {image["id"] for image, stem in zip(coco["images"], boxes, strict=True) if stem in chosen["boxes"]}
        write_json(out_dir / files["boxes"].name, {
            **coco,
            "images": [image for image in coco["images"] if image["id"] in keep],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
        })  # fmt: skip
    if "scribbles" in files:
        scribbles = out_dir / files["scribbles"].name
        scribbles.mkdir(parents=True, exist_ok=True)
        for image_id in sorted(chosen["scribbles"]):
            shutil.copyfile(files["scribbles"] / f"{image_id}.png", scribbles / f"{image_id}.png")
    write_json(out_dir / "mixed.json", {"seed": seed, "kinds": list(kinds), "assignment": assignment})
    return assignment
