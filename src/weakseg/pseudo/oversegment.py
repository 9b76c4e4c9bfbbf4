"""Low-level over-segmentation for SPML's image-similarity relation, computed once per image and cached.

SPML used HED contours + gPb-owt-ucm (MATLAB); we use scikit-image's Felzenszwalb–Huttenlocher graph segmentation or
SLIC superpixels instead (``benchmarks/oversegmentation.py`` compares them against the voc454 masks). Region maps are
``H×W`` int32 ids from 0, cached as 16-bit PNGs named after the image id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import felzenszwalb, slic

from weakseg.data.formats import atomic_write
from weakseg.data.sample import Sample, check_image_id
from weakseg.errors import ConfigError, DataError

METHODS = ("felzenszwalb", "slic")


@dataclass
class OversegmentConfig:
    method: str = "felzenszwalb"
    scale: float = 300.0  # felzenszwalb: larger → larger regions
    sigma: float = 0.8  # felzenszwalb / slic: Gaussian pre-smoothing
    min_size: int = 100  # felzenszwalb: smallest region, pixels
    segments: int = 100  # slic: about this many superpixels
    compactness: float = 10.0  # slic: colour vs space trade-off

    def check(self) -> OversegmentConfig:
        if self.method not in METHODS:
            raise ConfigError(f"oversegment.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.scale <= 0 or self.sigma < 0 or self.min_size < 1 or self.segments < 1 or self.compactness <= 0:
            raise ConfigError(f"oversegment: invalid settings {asdict(self)}")
        return self


def oversegment(image: np.ndarray, cfg: OversegmentConfig) -> np.ndarray:
    """``H×W`` int32 region ids (0…R−1, R < 65536) of an ``H×W×3`` uint8 RGB image."""
    cfg.check()
    if cfg.method == "felzenszwalb":
        regions = felzenszwalb(image, scale=cfg.scale, sigma=cfg.sigma, min_size=cfg.min_size, channel_axis=-1)
    else:
        regions = slic(
            image, n_segments=cfg.segments, compactness=cfg.compactness, sigma=cfg.sigma, start_label=0,
            channel_axis=-1,
        )  # fmt: skip
    _, regions = np.unique(regions, return_inverse=True)  # consecutive ids
    regions = regions.reshape(image.shape[:2]).astype(np.int32)
    if regions.max() >= 65536:
        raise DataError(None, f"over-segmentation gave {regions.max() + 1} regions; at most 65536 can be cached")
    return regions


class RegionCache:
    """Adds ``regions`` to samples: read from ``folder/<settings hash>/<image id>.png`` or computed and written.

    The folder holds one sub-folder per setting and ``scope`` (e.g. the dataset's folder, so that two datasets with
    the same image ids never share maps), with its ``settings.json``: changing either never reuses stale maps. A
    cached map of the wrong size is recomputed.
    """

    def __init__(self, folder: str | Path, cfg: OversegmentConfig, scope: str = "") -> None:
        self.cfg = cfg.check()
        settings = json.dumps({**asdict(cfg), "scope": scope}, sort_keys=True)
        self.folder = Path(folder) / hashlib.sha256(settings.encode()).hexdigest()[:12]
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "settings.json").write_text(settings + "\n")

    def regions(self, image_id: str, image: np.ndarray) -> np.ndarray:
        path = self.folder / f"{check_image_id(image_id)}.png"
        if path.is_file():
            cached = np.array(Image.open(path)).astype(np.int32)
            if cached.shape == image.shape[:2]:
                return cached
        regions = oversegment(image, self.cfg)
        png = Image.fromarray(regions.astype(np.uint16))
        atomic_write(path, lambda f: png.save(f, format="PNG"))
        return regions

    def __call__(self, sample: Sample) -> Sample:
        return sample.replace(regions=self.regions(sample.image_id, sample.image))
