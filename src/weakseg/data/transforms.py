"""Joint data augmentation that keeps the image and every label kind of a :class:`Sample` aligned.

Geometry follows the conventions of :mod:`weakseg.data.sample`: points are pixel-centre coordinates, boxes are
continuous coordinates where pixel column ``c`` spans ``[c, c+1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from weakseg.data.classes import IGNORE_INDEX
from weakseg.data.sample import NO_REGION, Sample

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class AugmentConfig:
    """Random augmentation settings, applied by :class:`JointTransform`.

    ``crop_size`` is the side of the square output crop (0 keeps the whole rescaled image), ``scale_range``
    the uniform range of the rescale factor, ``color_jitter`` the strength ``j`` of brightness, contrast and
    saturation factors drawn from ``[1 − j, 1 + j]`` (0 disables), ``pad_image_value`` the RGB used to pad the
    image (label maps pad with the ignore index).
    """

    crop_size: int = 256
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    color_jitter: float = 0.3
    pad_image_value: tuple[int, int, int] = (124, 116, 104)


class JointTransform:
    """Rescale → pad → random crop → horizontal flip → colour jitter, applied to a sample and all its labels.

    * Rescale: the image is resized bilinearly, ``mask``, ``scribble``, ``regions`` and ``blots`` with nearest
      neighbour (no new label values), to ``round(H·s) × round(W·s)``; coordinates use the exact per-axis factors
      of the rounded size.
    * Pad: when ``crop_size > 0`` the image is padded at the **bottom and right** up to at least the crop size
      (image with ``pad_image_value``, label maps with the ignore index, regions with −1), so coordinates are
      unchanged.
    * Crop: a uniformly random ``crop_size`` square; points whose pixel leaves the crop are dropped, boxes are
      clipped to it and dropped when no area is left.
    * Flip: with probability 1/2 when ``hflip``; a pure mirror of every array and coordinate.
    * Colour jitter: image only. Tags are untouched and ``meta`` is copied, with ``meta["valid"]`` set to the
      ``(x0, y0, x1, y1)`` rectangle of real image pixels in the output (the rest is padding).

    Rescale, pad and crop are done in one step that resamples only the crop window (about 2 ms for 500×375).
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """A new, transformed sample; the input sample and its arrays are left unchanged."""
        cfg = self.config
        image, points, boxes = sample.image, sample.points, sample.boxes
        h, w = image.shape[:2]
        scale = float(rng.uniform(*cfg.scale_range))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        sx, sy = nw / w, nh / h
        if cfg.crop_size > 0:
            size = cfg.crop_size
            y0 = int(rng.integers(0, max(nh, size) - size + 1))
            x0 = int(rng.integers(0, max(nw, size) - size + 1))
            window, out_shape = (x0, y0, min(x0 + size, nw), min(y0 + size, nh)), (size, size)
        else:
            window, out_shape = (0, 0, nw, nh), (nh, nw)
        valid = (0, 0, window[2] - window[0], window[3] - window[1])  # image pixels (not padding) in the output

        # Rescale, pad and crop in one step: only the pixels of the crop window are resampled.
        bilinear, nearest = Image.Resampling.BILINEAR, Image.Resampling.NEAREST
        image = _resample(image, window, sx, sy, out_shape, bilinear, cfg.pad_image_value)
        maps = {
            k: None if m is None else _resample(m, window, sx, sy, out_shape, nearest, fill)
            for k, m, fill in (
                ("mask", sample.mask, IGNORE_INDEX),
                ("scribble", sample.scribble, IGNORE_INDEX),
                ("regions", sample.regions, NO_REGION),
                ("blots", sample.blots, IGNORE_INDEX),
            )
        }
        if (sx, sy) != (1.0, 1.0):
            points = None if points is None else _scale_points(points, sx, sy, nw, nh)
            boxes = None if boxes is None else _scale_boxes(boxes, sx, sy)
        if cfg.crop_size > 0:
            points = None if points is None else _crop_points(points, x0, y0, cfg.crop_size)
            boxes = None if boxes is None else _crop_boxes(boxes, x0, y0, cfg.crop_size)

        if cfg.hflip and rng.random() < 0.5:
            width = image.shape[1]
            valid = (width - valid[2], valid[1], width - valid[0], valid[3])
            image = image[:, ::-1]
            maps = {k: None if m is None else m[:, ::-1] for k, m in maps.items()}
            if points is not None:
                points = points.copy()
                points[:, 0] = width - 1 - points[:, 0]
            if boxes is not None:
                boxes = boxes.copy()
                boxes[:, [0, 2]] = width - boxes[:, [2, 0]]

        if cfg.color_jitter > 0:
            image = _color_jitter(image, rng, cfg.color_jitter)

        return sample.replace(
            image=_detach(image, sample.image),
            mask=None if maps["mask"] is None else _detach(maps["mask"], sample.mask),
            scribble=None if maps["scribble"] is None else _detach(maps["scribble"], sample.scribble),
            regions=None if maps["regions"] is None else _detach(maps["regions"], sample.regions),
            blots=None if maps["blots"] is None else _detach(maps["blots"], sample.blots),
            points=None if points is None else _detach(points, sample.points),
            boxes=None if boxes is None else _detach(boxes, sample.boxes),
            tags=None if sample.tags is None else sample.tags.copy(),
            meta={**sample.meta, "valid": valid},
        )


def _resample(
    array: np.ndarray,
    window: tuple[int, int, int, int],
    sx: float,
    sy: float,
    out_shape: tuple[int, int],
    resample: Image.Resampling,
    fill: int | tuple[int, ...],
) -> np.ndarray:
    """The ``window`` (x0, y0, x1, y1) of ``array`` rescaled by (sx, sy), then padded to ``out_shape``.

    Resizing the whole array with PIL, padding and then cropping gives the same result (up to float rounding
    at exact nearest-neighbour ties), but only the window is resampled here.
    """
    x0, y0, x1, y1 = window
    h, w = array.shape[:2]
    if (sx, sy) == (1.0, 1.0):
        part = array[y0:y1, x0:x1]
    else:
        box = (x0 / sx, y0 / sy, min(x1 / sx, w), min(y1 / sy, h))
        part = np.array(Image.fromarray(array).resize((x1 - x0, y1 - y0), resample, box=box))
    if part.shape[:2] == out_shape:
        return part
    out = np.empty((*out_shape, *array.shape[2:]), dtype=array.dtype)
    out[...] = fill
    out[: y1 - y0, : x1 - x0] = part
    return out


def _scale_points(points: np.ndarray, sx: float, sy: float, width: int, height: int) -> np.ndarray:
    """Pixel-centre points under a rescale, kept inside the new image."""
    out = points.copy()
    out[:, 0] = np.clip((points[:, 0] + 0.5) * sx - 0.5, 0, width - 1)
    out[:, 1] = np.clip((points[:, 1] + 0.5) * sy - 0.5, 0, height - 1)
    return out


def _scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Continuous boxes under a rescale."""
    out = boxes.copy()
    out[:, [0, 2]] *= sx
    out[:, [1, 3]] *= sy
    return out


def _crop_points(points: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """Points shifted into a crop; those whose pixel lies outside it are dropped, the rest clipped inside."""
    xy = points[:, :2] - np.array([x0, y0], dtype=points.dtype)
    keep = np.all((xy >= -0.5) & (xy < size - 0.5), axis=1)
    out = points[keep].copy()
    out[:, :2] = np.clip(xy[keep], 0, size - 1)
    return out


def _crop_boxes(boxes: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """Boxes shifted into a crop and clipped to it; boxes with no area left are dropped."""
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(boxes[:, [0, 2]] - x0, 0, size)
    out[:, [1, 3]] = np.clip(boxes[:, [1, 3]] - y0, 0, size)
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def _color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor from ``[1 − strength, 1 + strength]``."""
    brightness, contrast, saturation = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    img = image.astype(np.float32) * brightness
    mean = float((img @ _LUMA).mean())
    img = (img - mean) * contrast + mean
    gray = (img @ _LUMA)[..., None]
    img = gray + (img - gray) * saturation
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _detach(new: np.ndarray, old: np.ndarray | None) -> np.ndarray:
    """``new`` as a contiguous array sharing no memory with the input ``old``."""
    if old is not None and np.shares_memory(new, old):
        return new.copy()
    return np.ascontiguousarray(new)
