"""Joint data augmentation that keeps the image, every map and every label kind of a :class:`Sample` aligned.

Geometry follows the conventions of :mod:`weakseg.data.sample`: points are pixel-centre coordinates, boxes are
continuous coordinates where pixel column ``c`` spans ``[c, c+1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from weakseg.data.kinds import Warp, table_kinds
from weakseg.data.sample import MAP_FILLS, Sample

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class AugmentConfig:
    """Random augmentation settings, applied by :class:`JointTransform`.

    ``crop_size`` is the side of the square output crop (0 keeps the whole rescaled image), ``scale_range``
    the uniform range of the rescale factor, ``color_jitter`` the strength ``j`` of brightness, contrast and
    saturation factors drawn from ``[1 − j, 1 + j]`` (0 disables), ``pad_image_value`` the RGB used to pad the
    image (maps pad with their registered fill).
    """

    crop_size: int = 256
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    color_jitter: float = 0.3
    pad_image_value: tuple[int, int, int] = (124, 116, 104)


class JointTransform:
    """Rescale → pad → random crop → horizontal flip → colour jitter, applied to a sample and all its labels.

    * Rescale: the image is resized bilinearly, every map of ``sample.maps`` with nearest neighbour (no new label
      values), to ``round(H·s) × round(W·s)``; coordinates use the exact per-axis factors of the rounded size.
    * Pad: when ``crop_size > 0`` the image is padded at the **bottom and right** up to at least the crop size
      (image with ``pad_image_value``, each map with its registered fill), so coordinates are unchanged.
    * Crop: a uniformly random ``crop_size`` square; points whose pixel leaves the crop are dropped, boxes are
      clipped to it and dropped when no area is left.
    * Flip: with probability 1/2 when ``hflip``; a pure mirror of every array and coordinate.
    * Colour jitter: image only. Tags are untouched and ``meta`` is copied, with ``meta["valid"]`` set to the
      ``(x0, y0, x1, y1)`` rectangle of real image pixels in the output (the rest is padding).

    Rescale, pad and crop are done in one step that resamples only the crop window (about 2 ms for 500×375). The
    labels of each registered table kind (points, boxes, tags) follow through the kind's ``warp``
    (:mod:`weakseg.data.kinds`).
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """A new, transformed sample; the input sample and its arrays are left unchanged."""
        cfg = self.config
        h, w = sample.size
        scale = float(rng.uniform(*cfg.scale_range))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        sx, sy = nw / w, nh / h
        if cfg.crop_size > 0:
            size = cfg.crop_size
            y0 = int(rng.integers(0, max(nh, size) - size + 1))
            x0 = int(rng.integers(0, max(nw, size) - size + 1))
            window, out_shape, crop = (x0, y0, min(x0 + size, nw), min(y0 + size, nh)), (size, size), (x0, y0, size)
        else:
            window, out_shape, crop = (0, 0, nw, nh), (nh, nw), None
        valid = (0, 0, window[2] - window[0], window[3] - window[1])  # image pixels (not padding) in the output
        mirror = out_shape[1] if cfg.hflip and rng.random() < 0.5 else None
        warp = Warp(scale=(sx, sy), size=(nw, nh), crop=crop, mirror=mirror)

        # Rescale, pad and crop in one step: only the pixels of the crop window are resampled.
        bilinear, nearest = Image.Resampling.BILINEAR, Image.Resampling.NEAREST
        image = _resample(sample.image, window, sx, sy, out_shape, bilinear, cfg.pad_image_value)
        maps = {
            name: _resample(m, window, sx, sy, out_shape, nearest, MAP_FILLS[name]) for name, m in sample.maps.items()
        }
        if mirror is not None:
            valid = (mirror - valid[2], valid[1], mirror - valid[0], valid[3])
            image = image[:, ::-1]
            maps = {name: m[:, ::-1] for name, m in maps.items()}
        tables = {
            kind.name: _detach(kind.warp(labels, warp), labels)
            for kind in table_kinds()
            if (labels := kind.value(sample)) is not None
        }

        if cfg.color_jitter > 0:
            image = _color_jitter(image, rng, cfg.color_jitter)

        return sample.replace(
            image=_detach(image, sample.image),
            maps={name: _detach(m, sample.maps[name]) for name, m in maps.items()},
            **tables,
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


def _color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor from ``[1 − strength, 1 + strength]``."""
    brightness, contrast, saturation = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    img = image.astype(np.float32) * brightness
    mean = float((img @ _LUMA).mean())
    img = (img - mean) * contrast + mean
    gray = (img @ _LUMA)[..., None]
    img = gray + (img - gray) * saturation
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _detach(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """``new`` as a contiguous array sharing no memory with the input ``old``."""
    if np.shares_memory(new, old):
        return new.copy()
    return np.ascontiguousarray(new)
