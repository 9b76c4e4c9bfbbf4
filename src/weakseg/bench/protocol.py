"""The benchmark protocol as data: profiles, the overrides every row shares, the datasets and the rows.

:data:`STANDARD` is the protocol the recorded rows and ablations were made with; the bench functions take a
:class:`Protocol` as an argument, so that tests can pass a tiny one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weakseg.data.dataset import DataConfig, camvid_layout, voc_layout
from weakseg.data.simulate import LabelProtocol
from weakseg.errors import ConfigError
from weakseg.methods import METHODS
from weakseg.methods.base import SUPERVISIONS


@dataclass(frozen=True)
class BenchDataset:
    name: str
    folder: str  # under --data-root
    layout: str  # voc | camvid
    recipes: tuple[str, ...] = ()  # extra recipes overlaid after the method's (data layout)
    supervisions: tuple[str, ...] = SUPERVISIONS
    given_boxes: str | None = None  # a real box file, used instead of boxes derived from masks
    label_protocol: LabelProtocol = field(default_factory=LabelProtocol)

    def data_config(self, root: Path) -> DataConfig:
        return voc_layout(root / self.folder) if self.layout == "voc" else camvid_layout(root / self.folder)

    def labels_record(self) -> dict:
        """How the dataset's weak labels are made, as a record holds it."""
        return {"protocol": self.label_protocol.to_dict(), "given_boxes": self.given_boxes}


@dataclass(frozen=True)
class RowVariant:
    """Rows of a registered method with other arguments: recipe ``<name>-<supervision>`` (``<name>`` for full
    supervision)."""

    name: str
    method: str
    supervisions: tuple[str, ...]


@dataclass(frozen=True)
class Protocol:
    profiles: dict[str, tuple[str, ...]]  # profile → overrides of every row
    stage_profiles: dict[str, tuple[str, ...]]  # profile → overrides of the first stage of multi-stage methods
    shared: tuple[str, ...]  # overrides of every row of every profile
    datasets: tuple[BenchDataset, ...]
    row_order: tuple[str, ...]  # rows in the tables: the upper bounds first, then methods as they land
    row_variants: tuple[RowVariant, ...] = ()

    def dataset(self, name: str) -> BenchDataset:
        for dataset in self.datasets:
            if dataset.name == name:
                return dataset
        names = ", ".join(d.name for d in self.datasets)
        raise ConfigError(f"unknown benchmark dataset {name!r} (datasets: {names})")

    def profile(self, name: str) -> tuple[str, ...]:
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r} (profiles: {', '.join(self.profiles)})")
        return self.profiles[name]

    def method_of(self, row_method: str) -> str:
        """The registered method a row trains (a variant's, or the row's own name)."""
        variant = self._variant(row_method)
        return variant.method if variant else row_method

    def row_supervisions(self, row_method: str) -> tuple[str, ...]:
        variant = self._variant(row_method)
        if variant:
            return variant.supervisions
        if row_method not in METHODS:
            names = sorted([*METHODS, *(v.name for v in self.row_variants)])
            raise ConfigError(f"unknown method {row_method!r} (available: {', '.join(names)})")
        return METHODS[row_method].supervisions

    def _variant(self, row_method: str) -> RowVariant | None:
        return next((v for v in self.row_variants if v.name == row_method), None)


STANDARD = Protocol(
    profiles={
        # Smoke checks: a few minutes per row on 2 CPU cores.
        "quick": ("train.steps=60", "train.ckpt_every=60", "eval.max_images=60"),
        # The numbers we quote: about 11 minutes of training per row on 2 CPU cores.
        "standard": ("train.steps=700", "train.ckpt_every=100"),
    },
    # The first (CAM) stage of multi-stage methods keeps its own step count, but for the quick profile's.
    stage_profiles={"quick": ("train.steps=30",), "standard": ()},
    shared=(
        "augment.crop_size=256",
        "augment.scale_range=[0.5, 1.5]",
        "train.batch_size=8",
        "train.lr=0.02",
        "train.backbone_lr_mult=0.5",
        "train.seed=0",
        "train.log_every=20",
        "data.num_workers=1",
        "model.weights=package",
    ),
    datasets=(
        BenchDataset("voc454", "voc454", "voc", given_boxes="boxes_coco.json"),
        # PMP's labels: a point at the centre of every real box plus 4 background points per object outside all boxes.
        BenchDataset(
            "voc454-box-centres",
            "voc454",
            "voc",
            supervisions=("full", "points"),
            given_boxes="boxes_coco.json",
            label_protocol=LabelProtocol(points_mode="box-centres"),
        ),
        # Image-level tags are nearly uninformative on CamVid (most frames hold most classes): points and scribbles.
        BenchDataset("camvid", "camvid", "camvid", ("data-camvid",), ("full", "points", "scribbles")),
    ),
    row_order=(
        "full",
        "full-scratch",
        "pce",
        "rloss",
        "box-fill",
        "box-prior",
        "boxinst",
        "probe",
        "cam",
        "hfpl",
        "seam",
        "ppc",
        "ppc-hfpl",
        "spml",
        "pmp",
        "pmp-pretrained",
    ),
    row_variants=(
        RowVariant("ppc-hfpl", "ppc", ("tags",)),
        RowVariant("pmp-pretrained", "pmp", ("points",)),
        RowVariant("box-fill", "box-prior", ("boxes",)),  # the plain baseline of every boxes row: filled boxes
        RowVariant("full-scratch", "full", ("full",)),  # the upper bound of `pmp` (from scratch): same model, schedule
    ),
)
