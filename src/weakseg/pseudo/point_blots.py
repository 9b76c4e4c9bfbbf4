"""PMP's point blots (papers/pmp-single-stage-points.txt §3.3; METHODS.md §5): points grown into sure regions.

1. A random walk on the image (scikit-image's ``random_walker``, Grady 2006) seeded by the points gives each pixel a
   probability per seed label; pixels at least ``confidence`` sure of a label form the initial mask, split into
   blobs by connected components (``skimage.measure.label``).
2. ``rounds`` times, with growing strength: the points of each class are moved by a random affine transform
   (rotation about their centroid up to ``rotation``·r/rounds degrees, translation up to ``translation``·r/rounds
   of the image diagonal) and the walk is run again; each candidate blob joins the current blob of its class it
   overlaps most when their IoU exceeds ``iou`` and the KL divergence of their colour histograms is below ``kl``.

The paper gives no values for the walk, the thresholds or the perturbation ranges; ours are below. The walk runs
on the image shrunk to ``max_side`` pixels (the direct solver there takes tens of milliseconds) and its
probabilities are brought back to full size. Deterministic for a seed. A sample carries its blots as the map
``blots`` (``Sample.maps``, ``batch["blots"]``), ``UNLABELLED`` (255) where it has none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from skimage.measure import label as connected_components
from skimage.segmentation import random_walker

from weakseg.data.sample import register_map
from weakseg.errors import ConfigError

UNLABELLED = 255
register_map("blots", UNLABELLED)


@dataclass
class PointBlotConfig:
    beta: float = 1000.0  # random-walk edge weight exp(−β·|ΔI|²) (scikit-image's default is 130)
    confidence: float = 0.98  # probability of the winning label that puts a pixel in the mask
    rounds: int = 5  # k
    rotation: float = 20.0  # degrees, at the last round
    translation: float = 0.05  # fraction of the image diagonal, at the last round
    iou: float = 0.3  # δ
    kl: float = 0.5  # φ, nats
    bins: int = 8  # colour histogram bins per channel (KL)
    max_side: int = 128  # the walk's working size

    def check(self) -> PointBlotConfig:
        if not 0.0 < self.confidence <= 1.0 or self.rounds < 0 or self.bins < 2 or self.max_side < 8:
            raise ConfigError(f"point blots: invalid settings {asdict(self)}")
        return self


def _walk(image: np.ndarray, points: np.ndarray, cfg: PointBlotConfig) -> np.ndarray:
    """``H×W`` labels (class ids; ``UNLABELLED`` where no label reaches ``confidence``) of a walk from ``points``."""
    h, w = image.shape[:2]
    scale = min(1.0, cfg.max_side / max(h, w))
    sh, sw = max(2, round(h * scale)), max(2, round(w * scale))
    small = np.asarray(Image.fromarray(image).resize((sw, sh), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    classes = sorted({int(c) for c in points[:, 2]})
    seeds = np.zeros((sh, sw), dtype=np.int64)
    for x, y, c in points:
        sx = min(max(int((x + 0.5) * sw / w), 0), sw - 1)
        sy = min(max(int((y + 0.5) * sh / h), 0), sh - 1)
        seeds[sy, sx] = classes.index(int(c)) + 1
    if len(classes) == 1:
        probs = np.ones((1, sh, sw))
    else:
        probs = random_walker(small, seeds, beta=cfg.beta, mode="bf", channel_axis=-1, return_full_prob=True)
    full = np.stack([np.asarray(Image.fromarray(p.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
                     for p in probs])  # fmt: skip
    labels = np.array(classes, dtype=np.uint8)[full.argmax(0)]
    return np.where(full.max(0) >= cfg.confidence, labels, UNLABELLED).astype(np.uint8)


def _histogram(image: np.ndarray, region: np.ndarray, bins: int) -> np.ndarray:
    """Smoothed joint RGB histogram (probabilities) of the pixels in ``region``."""
    quantised = (image[region].astype(np.int64) * bins) // 256
    flat = (quantised[:, 0] * bins + quantised[:, 1]) * bins + quantised[:, 2]
    counts = np.bincount(flat, minlength=bins**3).astype(np.float64) + 1e-3
    return counts / counts.sum()


def colour_kl(image: np.ndarray, a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    """KL(colours of ``a`` ‖ colours of ``b``) over smoothed joint RGB histograms."""
    p, q = _histogram(image, a, bins), _histogram(image, b, bins)
    return float((p * np.log(p / q)).sum())


def _perturb(points: np.ndarray, strength: float, cfg: PointBlotConfig, rng: np.random.Generator, h: int, w: int):
    """Each class's points rotated about their centroid and translated, by up to ``strength`` of the limits."""
    out = points.copy()
    diagonal = math.hypot(h, w)
    for c in np.unique(points[:, 2]):
        mine = points[:, 2] == c
        angle = math.radians(rng.uniform(-1, 1) * cfg.rotation * strength)
        shift = rng.uniform(-1, 1, size=2) * cfg.translation * strength * diagonal
        centre = points[mine, :2].mean(0)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        moved = (points[mine, :2] - centre) @ rotation.T + centre + shift
        out[mine, 0] = np.clip(moved[:, 0], 0, w - 1)
        out[mine, 1] = np.clip(moved[:, 1], 0, h - 1)
    return out


def point_blots(image: np.ndarray, points: np.ndarray, cfg: PointBlotConfig, seed: int = 0) -> np.ndarray:
    """``H×W`` uint8 label map of the blots grown from the ``N×3`` ``[x, y, class]`` points (``UNLABELLED`` = 255
    elsewhere); every point's own pixel keeps its label."""
    cfg.check()
    h, w = image.shape[:2]
    if not len(points):
        return np.full((h, w), UNLABELLED, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    current = _walk(image, points, cfg)
    blobs = connected_components(current != UNLABELLED, connectivity=1) * (current != UNLABELLED)
    for r in range(1, cfg.rounds + 1):
        candidate = _walk(image, _perturb(points, r / cfg.rounds, cfg, rng, h, w), cfg)
        pieces = connected_components(candidate != UNLABELLED, connectivity=1)
        for piece_id in range(1, int(pieces.max()) + 1):
            piece = pieces == piece_id
            cls = int(candidate[piece][0])
            overlap = blobs[piece & (current == cls)]
            if not overlap.size:
                continue
            blob = blobs == np.bincount(overlap).argmax()
            iou = (blob & piece).sum() / (blob | piece).sum()
            if iou > cfg.iou and colour_kl(image, piece, blob, cfg.bins) < cfg.kl:
                grow = piece & (current == UNLABELLED)
                current[grow] = cls
                blobs[grow] = blobs[blob][0]
    for x, y, c in points:
        current[round(float(y)), round(float(x))] = int(c)
    return current
