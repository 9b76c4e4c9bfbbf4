"""Datasets on disk: a folder of images, a split list, optional full masks and any subset of weak labels.

Records are validated once, when the dataset is built (every image and label map decoded, every point, box and
tag checked against its image and the class set), so a training run never dies half-way on a bad file. With
``skip_bad`` the bad records are dropped and summarised instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weakseg.data import formats
from weakseg.data.classes import ClassSet, get_class_set
from weakseg.data.kinds import KINDS, map_kinds, table_kinds
from weakseg.data.sample import Sample, image_id_problem
from weakseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class DataConfig:
    """Where a dataset lives. Paths are relative to ``root``; ``{split}`` in a path is replaced by the split."""

    root: str = ""
    classes: str = "voc"  # a built-in class set (voc, camvid) or a YAML/JSON file with names and palette
    images: str = "JPEGImages"
    masks: str | None = "SegmentationClass"
    train_masks: str | None = None  # label maps that replace the train split's masks (a pseudo-label folder)
    split_file: str | None = "ImageSets/Segmentation/{split}.txt"  # null: every image of the folder
    train_split: str = "train"
    val_split: str = "val"
    labels: str | None = None  # a `weakseg derive-labels` output folder; fills the four entries below
    tags: str | None = None  # JSON {image_id: [class ids]}
    boxes: str | None = None  # COCO JSON file, or a folder of VOC XML files
    points: str | None = None  # JSON {image_id: [[x, y, class_id], ...]}
    scribbles: str | None = None  # folder of PNG label maps, 255 = unlabelled
    skip_bad: bool = False
    validate: bool = True
    num_workers: int = 2

    def path(self, value: str | None, split: str) -> Path | None:
        if value is None:
            return None
        try:
            p = Path(value.format(split=split))
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"data path {value!r}: only {{split}} may stand in braces") from None
        return p if p.is_absolute() else Path(self.root) / p

    def label_path(self, kind: str, split: str) -> Path | None:
        """The file (or folder) of labels of ``kind``: for the full masks (the one kind that is not weak) the masks
        folder, ``train_masks`` on the train split; for a weak kind its explicit entry (``tags``, …) first, else its
        file in the ``labels`` folder."""
        if not KINDS[kind].weak:
            masks = self.train_masks if self.train_masks is not None and split == self.train_split else self.masks
            return self.path(masks, split)
        explicit = getattr(self, kind, None)
        if explicit is not None:
            return self.path(explicit, split)
        if self.labels is not None:
            candidate = self.path(self.labels, split) / KINDS[kind].file
            if candidate.exists():
                return candidate
        return None


def voc_layout(root: str | Path, **overrides) -> DataConfig:
    """The PASCAL VOC layout (JPEGImages, SegmentationClass, ImageSets/Segmentation, image_labels.json, boxes).

    A ``classes.yaml`` in the root names the dataset's own class set; without one the VOC classes are used.
    """
    root = Path(root)
    cfg = DataConfig(root=str(root), classes="classes.yaml" if (root / "classes.yaml").is_file() else "voc")
    if (root / "image_labels.json").is_file():
        cfg.tags = "image_labels.json"
    if (root / "boxes_coco.json").is_file():
        cfg.boxes = "boxes_coco.json"
    elif (root / "Annotations").is_dir():
        cfg.boxes = "Annotations"
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def camvid_layout(root: str | Path, **overrides) -> DataConfig:
    """The SegNet CamVid layout (images/{split}, labels/{split}, {split}.txt)."""
    cfg = DataConfig(
        root=str(root), classes="camvid", images="images/{split}", masks="labels/{split}", split_file="{split}.txt"
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def resolve_class_set(cfg: DataConfig, split: str = "train") -> ClassSet:
    """The class set of ``cfg``: a built-in name, or a file (relative to the data root, or absolute)."""
    local = cfg.path(cfg.classes, split)
    return get_class_set(str(local) if local is not None and local.is_file() else cfg.classes)


@dataclass
class Record:
    image_id: str
    image_path: Path
    # Per label kind the image has: its label-map file (map kinds) or its unchecked table entry (table kinds).
    labels: dict[str, Path | np.ndarray] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (height, width), known after validation
    extra: dict = field(default_factory=dict)


class SegmentationDataset(torch.utils.data.Dataset):
    """One split of a dataset, yielding :class:`Sample` records with the requested label kinds.

    ``kinds`` lists what to load: any registered label kind (:data:`weakseg.data.kinds.KINDS`: ``"mask"``, ``tags``,
    ``boxes``, ``points``, ``scribbles``). ``required`` lists the kinds every record must have (``"any-weak"``: at
    least one of the requested weak kinds, for mixed supervision).
    """

    def __init__(
        self,
        cfg: DataConfig,
        split: str,
        kinds: Sequence[str] = ("mask",),
        required: Sequence[str] = (),
        class_set: ClassSet | None = None,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown label kinds {sorted(unknown)}")
        self.cfg, self.split, self.kinds = cfg, split, tuple(kinds)
        self.class_set = class_set or resolve_class_set(cfg, split)
        self.skipped: list[str] = []
        self.records = self._discover(required)
        if cfg.validate:
            self._validate()
        if not self.records:
            raise DataError(cfg.path(cfg.images, split), f"no usable images in split '{split}'")

    def _discover(self, required: Sequence[str]) -> list[Record]:
        cfg, split = self.cfg, self.split
        image_dir = cfg.path(cfg.images, split)
        if image_dir is None or not image_dir.is_dir():
            raise DataError(image_dir, "image folder not found")
        by_stem: dict[str, list[Path]] = {}
        for p in sorted(image_dir.iterdir()):  # hidden files (macOS ._x.jpg, editors' backups) are not images
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                by_stem.setdefault(p.stem, []).append(p)
        split_path = cfg.path(cfg.split_file, split)
        if split_path is None:
            ids = sorted(by_stem)
        else:
            if not split_path.is_file():
                raise DataError(split_path, f"split list for '{split}' not found")
            ids = formats.read_split_list(split_path)
        self.label_files = {kind: cfg.label_path(kind, split) for kind in KINDS if kind in self.kinds}
        if "any-weak" in required:  # mixed supervision: the kinds with a file are loaded, the others skipped
            weak = {kind: path for kind, path in self.label_files.items() if KINDS[kind].weak}
            found = {kind: path for kind, path in weak.items() if path is not None and path.exists()}
            if weak and not found:
                wanted = "/".join(weak)
                raise DataError(cfg.labels, f"no {wanted} labels for split '{split}': set data.labels or data.<kind>")
            self.label_files = {
                kind: path for kind, path in self.label_files.items() if kind in found or kind not in weak
            }
        tables = {kind.name: self._read_table(kind.name) for kind in table_kinds() if kind.name in self.label_files}
        folders = {kind.name: self.label_files[kind.name] for kind in map_kinds() if kind.name in self.label_files}
        for name, folder in folders.items():
            kind = KINDS[name]
            if (folder is None or not folder.is_dir()) and (not kind.weak or "any-weak" not in required):
                raise DataError(folder or (cfg.labels if kind.weak else None), kind.missing)
        records = []
        for image_id in ids:
            paths = by_stem.get(image_id, [])
            problem = image_id_problem(image_id)
            if not paths:
                error = DataError(split_path or image_dir, f"image '{image_id}' listed but not found in {image_dir}")
            elif problem is not None:  # a file of the folder, listed by no split list
                error = DataError(image_dir, f"file {paths[0].name!r}: {problem}")
            elif len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                error = DataError(image_dir, f"image id {image_id!r} is ambiguous: it names {names}")
            else:
                error = None
            if error is not None:
                if not cfg.skip_bad:
                    raise error
                self.skipped.append(str(error))
                continue
            rec = Record(image_id, paths[0])
            for name, folder in folders.items():
                path = folder / f"{image_id}.png"
                if KINDS[name].every_image or path.is_file():
                    rec.labels[name] = path
            for name, table in tables.items():
                if image_id in table:
                    rec.labels[name] = table[image_id]
            records.append(rec)
        return self._require(records, required)

    def _read_table(self, kind: str) -> dict[str, np.ndarray]:
        path = self.label_files[kind]
        if path is None:
            raise DataError(None, f"no {kind} file for split '{self.split}': set data.{kind} or data.labels")
        return KINDS[kind].read(path, self.class_set)

    def _has(self, rec: Record, kind: str) -> bool:
        """Whether the record has labels of ``kind`` that count where the kind is required."""
        return kind in rec.labels and KINDS[kind].labelled(rec.labels[kind], self.class_set)

    def _require(self, records: list[Record], required: Sequence[str]) -> list[Record]:
        kept = []
        weak = [kind for kind in self.label_files if KINDS[kind].weak]
        for rec in records:
            missing = [k for k in required if k != "any-weak" and not self._has(rec, k)]
            if "any-weak" in required and not any(self._has(rec, k) for k in weak):
                missing.append("any of " + "/".join(weak))
            if missing:
                problem = f"image '{rec.image_id}' has no {', '.join(missing)} labels"
                if not self.cfg.skip_bad:
                    raise DataError(self.cfg.path(self.cfg.images, self.split), problem)
                self.skipped.append(problem)
                continue
            kept.append(rec)
        return kept

    def _validate(self) -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(self._check_record, self.records))
        good, bad = [], self.skipped
        for rec, error in zip(self.records, results, strict=True):
            if error is None:
                good.append(rec)
            elif self.cfg.skip_bad:
                bad.append(str(error))
            else:
                raise error
        if bad:
            log.warning("skipped %d bad sample(s) of split '%s':\n  %s", len(bad), self.split, "\n  ".join(bad))
        self.records = good

    def _check_record(self, rec: Record) -> DataError | None:
        try:
            self._load(rec)
        except DataError as exc:
            return exc
        return None

    def _load(self, rec: Record) -> Sample:
        """The record's sample: its label maps decoded, then its table entries validated, each against the image."""
        image = formats.read_image(rec.image_path)
        height, width = image.shape[:2]
        maps = {
            kind.map: kind.load(rec.labels[kind.name], (height, width), self.class_set)
            for kind in map_kinds()
            if kind.name in rec.labels
        }
        k, files, image_id = self.class_set.num_classes, self.label_files, rec.image_id
        tables = {
            kind.name: kind.validate(rec.labels[kind.name], height, width, k, files[kind.name], image_id=image_id)
            for kind in table_kinds()
            if kind.name in rec.labels
        }
        rec.size = (height, width)
        return Sample(rec.image_id, image, maps, **tables, meta={"path": str(rec.image_path)})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        return self._load(self.records[index])

    def masks(self) -> Iterator[tuple[str, np.ndarray]]:
        """(image_id, full mask) for every record, reading nothing else."""
        k, palette = self.class_set.num_classes, self.class_set.palette_array()
        for rec in self.records:
            if "mask" not in rec.labels:
                raise DataError(rec.image_path, "no mask loaded for this image (kinds lacks 'mask')")
            yield rec.image_id, formats.read_label_map(rec.labels["mask"], num_classes=k, palette=palette)

    def image_size(self, index: int) -> tuple[int, int]:
        rec = self.records[index]
        if rec.size is None:
            rec.size = formats.read_image_size(rec.image_path)
        return rec.size

    def labelled_pixel_fraction(self, kind: str) -> float:
        """Fraction of all image pixels carrying a label of ``kind`` (points count one pixel each); the same
        definition as ``derive-labels``'s density, so that ``mask`` gives the full-supervision row's fraction."""
        kind = "mask" if kind == "full" else kind
        labelled = total = 0
        for i, rec in enumerate(self.records):
            h, w = self.image_size(i)
            total += h * w
            if kind in rec.labels:
                labelled += KINDS[kind].pixels(rec.labels[kind], self.class_set)
        return labelled / max(total, 1)


def voc(root: str | Path, split: str = "train", kinds: Sequence[str] = ("mask",), **overrides) -> SegmentationDataset:
    """One line to load a VOC-layout dataset, e.g. ``voc("../shared/data/voc454", "val")``."""
    return SegmentationDataset(voc_layout(root, **overrides), split, kinds)


def camvid(
    root: str | Path, split: str = "train", kinds: Sequence[str] = ("mask",), **overrides
) -> SegmentationDataset:
    """One line to load the SegNet CamVid layout, e.g. ``camvid("../shared/data/camvid", "train")``."""
    return SegmentationDataset(camvid_layout(root, **overrides), split, kinds)
