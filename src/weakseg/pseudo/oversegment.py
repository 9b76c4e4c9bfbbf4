"""Low-level over-segmentation for SPML's image-similarity relation, computed once per image and cached.

SPML used HED contours + gPb-owt-ucm (MATLAB); we use scikit-image's Felzenszwalb–Huttenlocher graph segmentation or
SLIC superpixels instead (``benchmarks/oversegmentation.py`` compares them against the voc454 masks). Region maps are
``H×W`` int32 ids from 0, cached as 16-bit PNGs named after the image id (:class:`SampleMapCache`), carried as the
map ``regions`` of a sample (``Sample.maps``, ``batch["regions"]``), −1 (``NO_REGION``) outside every region.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from skimage.segmentation import felzenszwalb, slic

from weakseg.data.sample import Sample, register_map
from weakseg.errors import ConfigError, DataError
from weakseg.pseudo.cache import SampleMapCache

METHODS = ("felzenszwalb", "slic")
NO_REGION = -1  # ``regions`` outside every region (augmentation padding, samples without regions)
register_map("regions", NO_REGION)


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


class RegionCache(SampleMapCache):
    """Adds the map ``regions`` to samples, computed once per image, setting and ``scope`` (:class:`SampleMapCache`)."""

    def __init__(self, folder: str | Path, cfg: OversegmentConfig, scope: str = "") -> None:
        self.cfg = cfg.check()
        super().__init__(folder, asdict(cfg), "regions", self._compute, scope=scope)

    def _compute(self, sample: Sample) -> np.ndarray:
        return oversegment(sample.image, self.cfg)
