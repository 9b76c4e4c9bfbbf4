"""weakseg: semantic segmentation from weak labels (tags, boxes, points, scribbles)."""

__version__ = "0.1.0"
