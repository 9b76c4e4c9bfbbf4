"""Shared fixtures: a tiny generated dataset with every weak-label kind, and the real data when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weakseg.data.dataset import SegmentationDataset, resolve_class_set, voc_layout
from weakseg.data.simulate import LabelProtocol, derive_labels
from weakseg.data.synthetic import generate_shapes_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_voc454 = pytest.mark.skipif(not (SHARED_DATA / "voc454").is_dir(), reason="../shared/data/voc454 absent")
needs_camvid = pytest.mark.skipif(not (SHARED_DATA / "camvid").is_dir(), reason="../shared/data/camvid absent")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and robust to a busy machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 8-train / 3-val shapes dataset (64×64) with tags, boxes, points and scribbles in labels/."""
    root = generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=3, image_size=(64, 64))
    data = voc_layout(root, classes="classes.yaml")
    train = SegmentationDataset(data, "train", kinds=("mask",))
    derive_labels(
        train.masks(),
        resolve_class_set(data),
        root / "labels",
        ("tags", "boxes", "points", "scribbles"),
        LabelProtocol(seed=0, min_component_area=4),
        progress=False,
    )
    return root


def tiny_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that make any recipe train in about a second on the ``shapes`` fixture."""
    return [
        f"data.root={root}",
        "data.classes=classes.yaml",
        f"data.labels={root / 'labels'}",
        "data.num_workers=0",
        f"output_dir={out}",
        "model.pretrained=false",
        "model.head_channels=16",
        "augment.crop_size=48",
        "train.batch_size=2",
        "train.steps=4",
        "train.ckpt_every=2",
        "train.log_every=1",
        *extra,
    ]
