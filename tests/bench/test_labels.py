"""The simulated labels of a benchmark dataset: one folder per label protocol, mixed labels dealt per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from weakseg.bench.labels import ensure_labels, labels_dir
from weakseg.bench.protocol import BenchDataset
from weakseg.data.formats import read_coco_boxes, read_points_json
from weakseg.data.simulate import LabelProtocol


def test_box_centre_labels_are_a_centre_and_4_background_points_per_box(shapes: Path, tmp_path: Path) -> None:
    paper = BenchDataset("shapes", shapes.name, "voc", label_protocol=LabelProtocol(points_mode="box-centres"))
    summary = ensure_labels(paper, shapes.parent, "points", tmp_path)["summary"]
    labels = labels_dir(paper, tmp_path)
    boxes, points = read_coco_boxes(labels / "boxes_coco.json"), read_points_json(labels / "points.json")
    assert summary["points"]["total"] == 5 * sum(len(b) for b in boxes.values()) > 0
    for image_id, image_boxes in boxes.items():
        centres = np.floor((image_boxes[:, :2] + image_boxes[:, 2:4]) / 2)
        assert np.array_equal(points[image_id][: len(image_boxes), :2], centres)
        assert (points[image_id][len(image_boxes) :, 2] == 0).all()  # then background points
    assert labels != labels_dir(BenchDataset("shapes", shapes.name, "voc"), tmp_path)  # a folder per protocol


def test_mixed_labels_deal_the_train_images_one_kind_each(shapes: Path, tmp_path: Path) -> None:
    tiny = BenchDataset("shapes", shapes.name, "voc", label_protocol=LabelProtocol(min_component_area=4))
    ensure_labels(tiny, shapes.parent, "mixed", tmp_path)
    mixed = json.loads((labels_dir(tiny, tmp_path) / "mixed" / "mixed.json").read_text())
    assert sorted(mixed["assignment"].values()).count("points") == 2 and len(mixed["assignment"]) == 8
