"""From samples to batches: tensor conversion, collation and a deterministic, resumable step sampler.

Augmentation randomness is a pure function of ``(seed, epoch, index)``, and the sampler's order a pure function
of ``(seed, epoch)``: a run resumed at step ``s`` sees exactly the batches an uninterrupted run would, whatever
the number of data-loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from weakseg.data.kinds import KINDS, table_kinds
from weakseg.data.sample import MAP_FILLS, Sample

Batch = dict[str, object]


def sample_to_tensors(sample: Sample, num_classes: int) -> dict:
    """Tensors of one sample: uint8 image (3×H×W); every registered map as int64 (its fill value where the sample
    lacks it); each table kind's tensor (points, boxes, multi-hot tags); ``valid``, a bool map of the real image
    pixels (False on augmentation padding, see ``meta["valid"]``); and ``has``, whether the sample carries each
    registered label kind."""
    h, w = sample.size
    valid = torch.zeros((h, w), dtype=torch.bool)
    x0, y0, x1, y1 = sample.meta.get("valid", (0, 0, w, h))
    valid[y0:y1, x0:x1] = True
    maps = {
        name: torch.from_numpy(sample.maps[name].astype(np.int64))
        if name in sample.maps
        else torch.full((h, w), fill, dtype=torch.int64)
        for name, fill in MAP_FILLS.items()
    }
    return {
        "image_id": sample.image_id,
        "image": torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1))),
        **maps,
        **{kind.name: kind.to_tensor(kind.value(sample), num_classes) for kind in table_kinds()},
        "valid": valid,
        "has": {name: kind.value(sample) is not None for name, kind in KINDS.items()},
    }


def collate(items: list[dict]) -> Batch:
    """Stack fixed-size entries; keep image ids and ragged kinds (points, boxes) as per-image lists; ``has`` becomes
    bool tensors."""
    lists = {"image_id", *(kind.name for kind in table_kinds() if kind.ragged)}
    batch: Batch = {}
    for key, first in items[0].items():
        if key == "has":
            batch[key] = {k: torch.tensor([it["has"][k] for it in items]) for k in first}
        elif key in lists:
            batch[key] = [it[key] for it in items]
        else:
            batch[key] = torch.stack([it[key] for it in items])
    return batch


class PreparedTransform:
    """``transform(prepare(sample), rng)``: a per-sample step (a method's) before the random augmentation."""

    def __init__(
        self,
        prepare: Callable[[Sample], Sample],
        transform: Callable[[Sample, np.random.Generator], Sample],
    ) -> None:
        self.prepare, self.transform = prepare, transform

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return self.transform(self.prepare(sample), rng)


class AugmentedDataset(torch.utils.data.Dataset):
    """Index ``k`` = ``epoch · N + i``: sample ``i`` augmented with an RNG seeded by ``(seed, epoch, i)``."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        transform: Callable[[Sample, np.random.Generator], Sample],
        num_classes: int,
        seed: int,
    ) -> None:
        self.dataset, self.transform, self.num_classes, self.seed = dataset, transform, num_classes, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> dict:
        n = len(self.dataset)
        epoch, index = divmod(int(k), n)
        rng = np.random.default_rng([self.seed, epoch, index])
        return sample_to_tensors(self.transform(self.dataset[index], rng), self.num_classes)


class StepSampler(torch.utils.data.Sampler[list[int]]):
    """Yields the batches of steps ``start_step … total_steps − 1`` as lists of ``epoch · N + i`` indices.

    The sample stream is the concatenation of per-epoch permutations seeded by ``(seed, epoch)``; step ``s`` takes
    stream positions ``[s·B, (s+1)·B)``. ``rank``/``world_size`` take an interleaved share of each global batch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        total_steps: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch, self.total, self.seed = num_samples, batch_size, total_steps, seed
        self.start, self.rank, self.world = start_step, rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.batch, (step + 1) * self.batch):
            epoch, offset = divmod(pos, self.n)
            out.append(epoch * self.n + int(self._perm(epoch)[offset]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            yield self.global_batch(step)[self.rank :: self.world]

    def __len__(self) -> int:
        return max(self.total - self.start, 0)
