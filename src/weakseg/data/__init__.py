"""Data layer: records, readers, weak-label simulation, augmentation and loaders."""

from weakseg.data.classes import CAMVID, VOC, ClassSet, get_class_set
from weakseg.data.dataset import DataConfig, SegmentationDataset, camvid, camvid_layout, voc, voc_layout
from weakseg.data.sample import Sample

__all__ = [
    "CAMVID",
    "VOC",
    "ClassSet",
    "DataConfig",
    "Sample",
    "SegmentationDataset",
    "camvid",
    "camvid_layout",
    "get_class_set",
    "voc",
    "voc_layout",
]
