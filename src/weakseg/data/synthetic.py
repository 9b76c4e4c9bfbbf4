"""The embedded demo dataset: procedurally generated textured shapes on textured backgrounds, in VOC layout.

Each object class is a *combination* of shape and texture (striped ellipse, checkered rectangle, dotted
triangle, noisy ring) whose hue ranges overlap, so colour alone does not solve the task.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

from weakseg.data.classes import ClassSet

SHAPES_CLASSES = ClassSet(
    name="shapes",
    names=("background", "disc", "square", "triangle", "ring"),
    palette=((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)),
    background=0,
)

# hue centre per class id; objects jitter by ±0.2, so neighbouring classes' hue ranges overlap
_HUE_CENTRES = (0.0, 0.0, 0.25, 0.5, 0.75)
_MAX_OBJECTS = 3
_PLACEMENT_TRIES = 10
_MIN_VISIBLE_PX = 40


def generate_shapes_dataset(
    root: Path,
    *,
    num_train: int = 48,
    num_val: int = 16,
    image_size: tuple[int, int] = (160, 160),
    seed: int = 0,
) -> Path:
    """Write the shapes dataset to ``root`` in VOC layout and return ``root``.

    Layout: ``JPEGImages/<id>.png`` (lossless RGB PNG despite the folder name), ``SegmentationClass/<id>.png``
    (palette PNG of class ids 0–4, no ignore pixels), ``ImageSets/Segmentation/{train,val}.txt`` and
    ``classes.yaml``. ``image_size`` is (height, width). Image ``i`` depends only on ``(seed, i)``, and its
    first object has class ``i mod 4 + 1``, so every run of four consecutive images shows every class.
    """
    root = Path(root)
    image_dir, mask_dir = root / "JPEGImages", root / "SegmentationClass"
    split_dir = root / "ImageSets" / "Segmentation"
    for folder in (image_dir, mask_dir, split_dir):
        folder.mkdir(parents=True, exist_ok=True)
    palette = SHAPES_CLASSES.palette_array().ravel().tolist()
    ids = [f"shape_{i:04d}" for i in range(num_train + num_val)]
    for i, image_id in enumerate(ids):
        image, mask = _render(np.random.default_rng([seed, i]), image_size, first_class=i % 4 + 1)
        Image.fromarray(image).save(image_dir / f"{image_id}.png", compress_level=1)
        label = Image.fromarray(mask)
        label.putpalette(palette)
        label.save(mask_dir / f"{image_id}.png")
    (split_dir / "train.txt").write_text("".join(f"{i}\n" for i in ids[:num_train]))
    (split_dir / "val.txt").write_text("".join(f"{i}\n" for i in ids[num_train:]))
    (root / "classes.yaml").write_text(yaml.safe_dump(SHAPES_CLASSES.to_dict(), sort_keys=False))
    return root


def _render(rng: np.random.Generator, size: tuple[int, int], first_class: int) -> tuple[np.ndarray, np.ndarray]:
    """One H×W×3 uint8 image and its H×W uint8 class mask."""
    h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    canvas = _background(rng, yy, xx)
    mask = np.zeros((h, w), dtype=np.uint8)
    owner = np.full((h, w), -1, dtype=np.int64)  # index of the object that owns each pixel
    classes = [first_class, *rng.integers(1, 5, size=rng.integers(0, _MAX_OBJECTS)).tolist()]
    for index, cls in enumerate(classes):
        for _ in range(_PLACEMENT_TRIES):
            region, colour = _draw_object(rng, cls, yy, xx)
            # reject placements that hide more than half of an earlier object or show too little of this one
            visible = np.bincount(owner[owner >= 0], minlength=index)
            covered = np.bincount(owner[region & (owner >= 0)], minlength=index)
            if np.all(2 * covered <= visible) and region.sum() >= _MIN_VISIBLE_PX:
                canvas[region] = colour[region]
                mask[region] = cls
                owner[region] = index
                break
    image = ndimage.gaussian_filter(canvas, sigma=(0.6, 0.6, 0)) + rng.normal(0.0, 0.02, canvas.shape)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    """An RGB float32 colour in [0, 1] from HSV (hue wraps around)."""
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32)


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """An H×W×3 float image in [0, 1]: smooth colour noise, a linear gradient or wavy grain, muted colours."""
    h, w = yy.shape
    base = _hsv(rng.random(), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.85))
    other = _hsv(rng.random(), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.85))
    kind = rng.integers(3)
    if kind == 0:
        noise = np.stack([_smooth_noise(rng, h, w) for _ in range(3)], axis=-1)
        return np.clip(base + 0.1 * noise, 0, 1)
    angle = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == 1:
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    else:
        t = 0.5 + 0.25 * np.sin(2 * np.pi * along / rng.uniform(12, 30) + 4 * _smooth_noise(rng, h, w))
    return (base + (other - base) * t[..., None]).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H×W float32 noise with zero mean and unit std: a coarse 5×5 random grid upsampled bicubically."""
    coarse = rng.standard_normal((5, 5)).astype(np.float32)
    field = np.array(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    return (field - field.mean()) / field.std()


def _draw_object(rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The boolean region of one random object of class ``cls`` and its H×W×3 textured colour."""
    h, w = yy.shape
    radius = rng.uniform(0.12, 0.24) * min(h, w)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = (yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta)
    hue = _HUE_CENTRES[cls] + rng.uniform(-0.2, 0.2)
    val = rng.uniform(0.55, 0.95)
    light = _hsv(hue, rng.uniform(0.5, 0.95), val)
    dark = _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.5, 0.95), val * rng.uniform(0.35, 0.6))
    if cls == 1:  # disc: ellipse with stripes in a random direction
        region = (u / radius) ** 2 + (v / (radius * rng.uniform(0.65, 1.0))) ** 2 <= 1
        psi = rng.uniform(0, np.pi)
        t = np.sin(2 * np.pi * (xx * np.cos(psi) + yy * np.sin(psi)) / rng.uniform(5, 9)) > 0
    elif cls == 2:  # square: rotated rectangle with a checkerboard aligned to it
        half = 0.85 * radius
        region = (np.abs(u) <= half) & (np.abs(v) <= half * rng.uniform(0.75, 1.0))
        cell = rng.uniform(4, 8)
        t = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 1
    elif cls == 3:  # triangle: equilateral (inradius = radius · 0.6) with a grid of dots
        normals = np.arange(3) * (2 * np.pi / 3)
        reach = u[..., None] * np.cos(normals) + v[..., None] * np.sin(normals)
        region = reach.max(axis=-1) <= 0.6 * radius
        spacing = rng.uniform(5, 8)
        t = ((u % spacing) - spacing / 2) ** 2 + ((v % spacing) - spacing / 2) ** 2 <= (0.3 * spacing) ** 2
    else:  # ring: annulus of noisy colour
        dist = np.hypot(u, v)
        region = (dist <= radius) & (dist >= radius * rng.uniform(0.45, 0.65))
        t = rng.random(yy.shape)
    colour = light + (dark - light) * t[..., None].astype(np.float32)
    if cls == 4:
        colour = colour + rng.normal(0.0, 0.08, colour.shape).astype(np.float32)
    return region, np.clip(colour, 0, 1)
