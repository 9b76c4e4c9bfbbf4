"""The weak labels of a benchmark dataset, simulated once per label protocol from its training masks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from weakseg.bench.protocol import BenchDataset
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.formats import read_coco_boxes
from weakseg.data.sample import LABEL_KINDS
from weakseg.data.simulate import derive_labels, mix_labels

MIXED_FOLDER = "mixed"  # under a protocol's labels: each train image keeps one kind (mix_labels)


def labels_dir(dataset: BenchDataset, cache: Path) -> Path:
    """Where the dataset's simulated labels are kept: one folder per label protocol."""
    key = json.dumps({"protocol": dataset.label_protocol.to_dict(), "boxes": dataset.given_boxes}, sort_keys=True)
    return cache.resolve() / "labels" / dataset.name / hashlib.sha256(key.encode()).hexdigest()[:12]


def ensure_labels(dataset: BenchDataset, data_root: Path, supervision: str, cache: Path) -> dict:
    """Simulate the dataset's weak labels once per protocol (train split) and return their summary."""
    out = labels_dir(dataset, cache)
    protocol_file = out / "protocol.json"
    if not protocol_file.is_file():
        derive_all(dataset, data_root, out)
    if supervision == "mixed" and not (out / MIXED_FOLDER / "mixed.json").is_file():
        mix_labels(out, out / MIXED_FOLDER, LABEL_KINDS, seed=dataset.label_protocol.seed)
    return json.loads(protocol_file.read_text())


def derive_all(dataset: BenchDataset, data_root: Path, out: Path) -> None:
    """Every weak-label kind of the dataset's train split, by its protocol (real boxes where the dataset has them)."""
    data = dataset.data_config(data_root)
    train = SegmentationDataset(data, data.train_split, kinds=("mask",), required=("mask",))
    given = read_coco_boxes(Path(data.root) / dataset.given_boxes) if dataset.given_boxes else None
    derive_labels(train.masks(), train.class_set, out, LABEL_KINDS, dataset.label_protocol, given, progress=False)


def describe_labels(dataset: BenchDataset, supervision: str, summary: dict) -> tuple[str, float | None]:
    """A weakly supervised row's label protocol in words, and the fraction of pixels its labels cover (None for
    mixed labels); ``summary`` is :func:`ensure_labels`'."""
    given = dataset.given_boxes is not None
    if supervision == "mixed":
        protocol = dataset.label_protocol
        dealt = f"mixed: the train images dealt evenly to {'/'.join(LABEL_KINDS)} (seed {protocol.seed}); "
        return dealt + protocol.describe(LABEL_KINDS, given_boxes=given), None
    fraction = summary["summary"][supervision].get("labelled_pixel_fraction")
    return dataset.label_protocol.describe([supervision], given_boxes=given), fraction
