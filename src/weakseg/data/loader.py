"""From samples to batches: tensor conversion, collation and a deterministic, resumable step sampler.

Augmentation randomness is a pure function of ``(seed, epoch, index)``, and the sampler's order a pure function
of ``(seed, epoch)``: a run resumed at step ``s`` sees exactly the batches an uninterrupted run would, whatever
the number of data-loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from weakseg.data.classes import IGNORE_INDEX
from weakseg.data.sample import NO_REGION, Sample

Batch = dict[str, object]


def sample_to_tensors(sample: Sample, num_classes: int) -> dict:
    """Tensors of one sample: uint8 image (3×H×W), int64 mask / scribble / blots (255 where absent), int64 regions
    (−1 where absent), points, boxes, tags, and ``valid``, a bool map of the real image pixels (False on
    augmentation padding, see ``meta["valid"]``)."""
    h, w = sample.size
    valid = torch.zeros((h, w), dtype=torch.bool)
    x0, y0, x1, y1 = sample.meta.get("valid", (0, 0, w, h))
    valid[y0:y1, x0:x1] = True
    absent = torch.full((h, w), IGNORE_INDEX, dtype=torch.int64)
    tags = torch.zeros(num_classes, dtype=torch.float32)
    if sample.tags is not None:
        tags[torch.as_tensor(sample.tags, dtype=torch.int64)] = 1.0
    return {
        "image_id": sample.image_id,
        "image": torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1))),
        "mask": absent if sample.mask is None else torch.from_numpy(sample.mask.astype(np.int64)),
        "scribble": absent if sample.scribble is None else torch.from_numpy(sample.scribble.astype(np.int64)),
        "blots": absent if sample.blots is None else torch.from_numpy(sample.blots.astype(np.int64)),
        "regions": torch.full((h, w), NO_REGION, dtype=torch.int64)
        if sample.regions is None
        else torch.from_numpy(sample.regions.astype(np.int64)),
        "points": torch.zeros(0, 3) if sample.points is None else torch.from_numpy(sample.points).float(),
        "boxes": torch.zeros(0, 5) if sample.boxes is None else torch.from_numpy(sample.boxes).float(),
        "tags": tags,
        "valid": valid,
        "has": {
            "mask": sample.mask is not None,
            "tags": sample.tags is not None,
            "boxes": sample.boxes is not None,
            "points": sample.points is not None,
            "scribbles": sample.scribble is not None,
        },
    }


def collate(items: list[dict]) -> Batch:
    """Stack fixed-size entries; keep points and boxes as per-image lists; ``has`` becomes bool tensors."""
    return {
        "image_id": [it["image_id"] for it in items],
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "scribble": torch.stack([it["scribble"] for it in items]),
        "regions": torch.stack([it["regions"] for it in items]),
        "blots": torch.stack([it["blots"] for it in items]),
        "points": [it["points"] for it in items],
        "boxes": [it["boxes"] for it in items],
        "tags": torch.stack([it["tags"] for it in items]),
        "valid": torch.stack([it["valid"] for it in items]),
        "has": {k: torch.tensor([it["has"][k] for it in items]) for k in items[0]["has"]},
    }


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
