"""Over-segmentation for SPML: regions respect colour edges, ids are consecutive, the cache computes each map once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from weakseg.data.sample import Sample
from weakseg.errors import ConfigError, DataError
from weakseg.pseudo import oversegment as module
from weakseg.pseudo.oversegment import OversegmentConfig, RegionCache, oversegment


def two_halves(h: int = 40, w: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 40)
    image[:, w // 2 :] = (30, 60, 210)
    return np.clip(image.astype(int) + rng.integers(-5, 6, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_regions_never_cross_a_strong_colour_edge(method: str) -> None:
    image = two_halves()
    regions = oversegment(image, OversegmentConfig(method=method, segments=12, min_size=20))
    assert regions.dtype == np.int32 and regions.shape == (40, 60)
    assert np.array_equal(np.unique(regions), np.arange(regions.max() + 1))  # consecutive ids from 0
    # σ = 0.8 pre-smoothing mixes the two columns at the edge: they may join either side.
    left, right = set(np.unique(regions[:, :29]).tolist()), set(np.unique(regions[:, 31:]).tolist())
    assert not left & right


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="oversegment.method must be one of felzenszwalb, slic"):
        OversegmentConfig(method="ucm").check()
    with pytest.raises(ConfigError, match="invalid settings"):
        OversegmentConfig(scale=0).check()


def test_cache_computes_each_map_once_per_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = module.oversegment
    monkeypatch.setattr(module, "oversegment", lambda image, cfg: calls.append(cfg.method) or real(image, cfg))
    sample = Sample("img_1", two_halves())
    cache = RegionCache(tmp_path, OversegmentConfig())
    first = cache(sample).maps["regions"]
    second = RegionCache(tmp_path, OversegmentConfig())(sample).maps["regions"]
    assert calls == ["felzenszwalb"] and np.array_equal(first, second) and second.dtype == np.int32
    RegionCache(tmp_path, OversegmentConfig(method="slic"))(sample)
    assert calls == ["felzenszwalb", "slic"]  # another setting, another folder
    assert len([p for p in tmp_path.iterdir() if (p / "settings.json").is_file()]) == 2
    resized = Sample("img_1", two_halves(20, 30))
    assert cache(resized).maps["regions"].shape == (20, 30) and len(calls) == 3  # a stale size is recomputed


def test_unsafe_image_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a safe file name"):
        RegionCache(tmp_path, OversegmentConfig())(Sample("../escape", two_halves()))
