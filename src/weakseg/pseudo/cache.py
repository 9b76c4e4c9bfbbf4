"""Per-image maps a method derives from a training sample once (over-segmentations, point blots), cached on disk and
added to the sample's registered maps (``Sample.maps``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.formats import atomic_write
from weakseg.data.sample import Sample, check_image_id


class SampleMapCache:
    """Adds the map ``name`` (registered: :func:`~weakseg.data.sample.register_map`) to each sample:
    ``compute(sample)``, read from ``folder/<settings hash>/<image id>[-key].png`` when there, else computed and
    written (16-bit PNG, atomically).

    One sub-folder per ``settings`` (with its ``settings.json``, ``scope`` included: e.g. the dataset's folder, so two
    datasets with the same image ids never share maps), so changing them never reuses stale maps. ``key(sample)``
    names what else the map depends on (e.g. a digest of the points); a cached map of the wrong size is recomputed.
    """

    def __init__(
        self,
        folder: str | Path,
        settings: dict,
        name: str,
        compute: Callable[[Sample], np.ndarray],
        *,
        scope: str = "",
        key: Callable[[Sample], str] | None = None,
        offset: int = 0,
    ) -> None:
        # The settings name the map under "field", as they did when maps were Sample fields: existing caches stay valid.
        text = json.dumps({**settings, "field": name, "scope": scope}, sort_keys=True)
        self.folder = Path(folder) / hashlib.sha256(text.encode()).hexdigest()[:12]
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "settings.json").write_text(text + "\n")
        self.name, self.compute, self.key = name, compute, key
        self.offset = offset  # stored as value + offset (maps with −1 fit a uint16 PNG)

    def get(self, sample: Sample) -> np.ndarray:
        suffix = f"-{self.key(sample)}" if self.key is not None else ""
        path = self.folder / f"{check_image_id(sample.image_id)}{suffix}.png"
        if path.is_file():
            cached = np.array(Image.open(path)).astype(np.int32) - self.offset
            if cached.shape == sample.size:
                return cached
        value = np.asarray(self.compute(sample))
        stored = value.astype(np.int64) + self.offset
        if stored.min() < 0 or stored.max() >= 65536:
            raise ValueError(f"{self.name} of {sample.image_id}: values do not fit a 16-bit PNG")
        png = Image.fromarray(stored.astype(np.uint16))
        atomic_write(path, lambda f: png.save(f, format="PNG"))
        return value

    def __call__(self, sample: Sample) -> Sample:
        return sample.with_maps(**{self.name: self.get(sample)})


def digest(array: np.ndarray | None) -> str:
    """A short stable digest of an array's bytes (a cache key for what a map depends on)."""
    data = b"" if array is None else np.ascontiguousarray(array).tobytes()
    return hashlib.sha256(data).hexdigest()[:10]
