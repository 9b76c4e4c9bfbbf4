"""A tiny protocol on the generated shapes data, and empty benchmark data folders for planning rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from weakseg.bench.protocol import STANDARD, BenchDataset, Protocol
from weakseg.bench.rows import Row
from weakseg.data.simulate import LabelProtocol


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Empty voc454/ and camvid/ folders: enough to plan the standard rows and resolve their recipes."""
    for folder in ("voc454", "camvid"):
        (tmp_path / folder).mkdir()
    (tmp_path / "voc454" / "image_labels.json").write_text("{}")
    return tmp_path


@pytest.fixture
def tiny(shapes: Path) -> Protocol:
    """The standard rows on the shapes data (``--data-root`` its parent): 4 steps, a checkpoint every 2."""
    steps = ("train.steps=4", "train.ckpt_every=2", "train.log_every=2")
    return Protocol(
        profiles={"quick": steps, "standard": steps},
        stage_profiles={"quick": ("train.steps=2",), "standard": ("train.steps=2",)},
        shared=(
            "augment.crop_size=48",
            "train.batch_size=2",
            "data.num_workers=0",
            "model.head_channels=16",
            "model.pretrained=false",
            "pseudo.scales=[1.0]",
            "pseudo.flip=false",
        ),
        datasets=(BenchDataset("shapes", shapes.name, "voc", label_protocol=LabelProtocol(min_component_area=4)),),
        row_order=STANDARD.row_order,
        row_variants=STANDARD.row_variants,
    )


@pytest.fixture
def tiny_row(tiny: Protocol, shapes: Path, tmp_path: Path) -> Row:
    """A `pce` scribbles row on the shapes data."""
    return Row(tiny, "quick", tiny.dataset("shapes"), "pce", "scribbles", shapes.parent, tmp_path / "results")
