"""Turning sparse weak labels into dense target maps (with ignore) on any device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weakseg.data.classes import IGNORE_INDEX


def disk_offsets(radius: int, device: torch.device | None = None) -> torch.Tensor:
    """(dy, dx) integer offsets of a disk of ``radius`` pixels (M×2)."""
    r = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    keep = (dy * dy + dx * dx).flatten() <= radius * radius
    return torch.stack([dy.flatten()[keep], dx.flatten()[keep]], dim=1)


def rasterize_points(
    points: list[torch.Tensor], height: int, width: int, radius: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """A B×H×W label map with each point's class on a disk of ``radius`` px, ``IGNORE_INDEX`` elsewhere.

    Where disks overlap, the nearest point wins (:func:`dilate_labels`); two points on one pixel: the later wins.
    """
    out = torch.full((len(points), height, width), IGNORE_INDEX, dtype=torch.int64, device=device)
    for b, pts in enumerate(points):
        if len(pts):
            pts = pts.to(device)
            rows = pts[:, 1].round().long().clamp(0, height - 1)
            cols = pts[:, 0].round().long().clamp(0, width - 1)
            out[b].index_put_((rows, cols), pts[:, 2].long())
    return dilate_labels(out, radius)


def dilate_labels(labels: torch.Tensor, radius: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Grow labelled pixels of a B×H×W map into unlabelled pixels within ``radius`` (nearest label wins)."""
    if radius <= 0:
        return labels
    h, w = labels.shape[-2:]
    padded = F.pad(labels, (radius, radius, radius, radius), value=ignore_index)
    out = labels
    best = torch.where(labels != ignore_index, 0, radius * radius + 1)
    for dy, dx in disk_offsets(radius).tolist():
        d2 = dy * dy + dx * dx
        if d2 == 0:
            continue
        shifted = padded[:, radius - dy : radius - dy + h, radius - dx : radius - dx + w]  # labels[y − dy, x − dx]
        take = (shifted != ignore_index) & (best > d2)
        out = torch.where(take, shifted, out)
        best = torch.where(take, d2, best)
    return out
