"""Box priors: per box, which of its pixels hold the object, from the image alone (no model).

``box``: every pixel of the box (the plain "fill the box" baseline). ``grabcut``: OpenCV's GrabCut (Rother et al.
2004) per box, as Simple Does It (Khoreva et al., CVPR 2017) labels boxes: colour GMMs of object and background,
iterated graph cuts, the pixels outside the box sure background and those inside probable object; it runs on a
window of the image around the box (the box grown by ``margin`` of its size on each side) so that the background
model is local. Where GrabCut keeps less than ``min_fill`` of a box (it lost the object), the box is kept whole.
"""

from __future__ import annotations

import cv2
import numpy as np

from weakseg.data.sample import box_pixel_slices

BOX_PRIORS = ("box", "grabcut")


def box_priors(
    image: np.ndarray,
    boxes: np.ndarray,
    prior: str = "grabcut",
    *,
    iterations: int = 5,
    margin: float = 0.5,
    min_fill: float = 0.05,
) -> np.ndarray:
    """``N×H×W`` float32 in {0, 1}: the object pixels of each of ``boxes`` (``N×5 [x0, y0, x1, y1, class]`` in pixels)
    in the ``H×W×3`` uint8 RGB ``image``, zero outside the box."""
    if prior not in BOX_PRIORS:
        raise ValueError(f"unknown box prior {prior!r} (use {' or '.join(BOX_PRIORS)})")
    height, width = image.shape[:2]
    out = np.zeros((len(boxes), height, width), np.float32)
    for n, box in enumerate(np.asarray(boxes, dtype=np.float64)):
        rows, cols = box_pixel_slices(box, height, width)
        out[n, rows, cols] = 1.0
        if prior == "grabcut":
            inside = grabcut_box(image, rows, cols, iterations, margin)
            if inside is not None and inside.mean() >= min_fill:
                out[n, rows, cols] = inside
    return out


def grabcut_box(image: np.ndarray, rows: slice, cols: slice, iterations: int, margin: float) -> np.ndarray | None:
    """GrabCut's object pixels inside the box ``rows × cols`` (float32 0/1 of the box's size), or None where the box
    leaves no background around it to model (it fills the image) or is thinner than 3 pixels."""
    height, width = image.shape[:2]
    box_h, box_w = rows.stop - rows.start, cols.stop - cols.start
    r0, r1 = max(0, rows.start - int(margin * box_h) - 4), min(height, rows.stop + int(margin * box_h) + 4)
    c0, c1 = max(0, cols.start - int(margin * box_w) - 4), min(width, cols.stop + int(margin * box_w) + 4)
    if min(box_h, box_w) < 3 or (r1 - r0) * (c1 - c0) == box_h * box_w:
        return None
    window = np.ascontiguousarray(image[r0:r1, c0:c1, ::-1])  # OpenCV's BGR
    mask = np.full(window.shape[:2], cv2.GC_BGD, np.uint8)
    box = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
    mask[box] = cv2.GC_PR_FGD
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(window, mask, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a GMM with too few distinct colours (a flat box or window)
        return None
    return np.isin(mask[box], (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
