"""Batches: the step sampler's determinism and resumability, collation, point rasterisation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from weakseg.data.classes import IGNORE_INDEX
from weakseg.data.loader import StepSampler, collate, sample_to_tensors
from weakseg.data.rasterize import dilate_labels, rasterize_points
from weakseg.data.sample import Sample
from weakseg.pseudo import oversegment  # noqa: F401 (registers the map "regions")


def test_sampler_resumes_mid_run() -> None:
    full = list(StepSampler(10, 4, 12, seed=3))
    resumed = list(StepSampler(10, 4, 12, seed=3, start_step=5))
    assert full[5:] == resumed


def test_sampler_visits_every_sample_once_per_epoch() -> None:
    stream = [k for batch in StepSampler(10, 5, 6, seed=0) for k in batch]
    for epoch in range(3):
        chunk = stream[epoch * 10 : (epoch + 1) * 10]
        assert sorted(k % 10 for k in chunk) == list(range(10))
        assert all(k // 10 == epoch for k in chunk)


def test_sampler_ranks_partition_the_global_batch() -> None:
    whole = list(StepSampler(9, 4, 5, seed=1))
    parts = [list(StepSampler(9, 4, 5, seed=1, rank=r, world_size=2)) for r in range(2)]
    for step, batch in enumerate(whole):
        assert sorted(parts[0][step] + parts[1][step]) == sorted(batch)


def test_collate_keeps_variable_length_labels() -> None:
    a = Sample("a", np.zeros((4, 5, 3), np.uint8), points=np.array([[1, 2, 3]], np.float32), tags=np.array([1]))
    regions = np.arange(20, dtype=np.int32).reshape(4, 5) + 300
    b = Sample(
        "b",
        np.zeros((4, 5, 3), np.uint8),
        maps={"mask": np.ones((4, 5), np.uint8), "regions": regions},
        meta={"valid": (0, 0, 3, 2)},
    )
    batch = collate([sample_to_tensors(s, 4) for s in (a, b)])
    assert (batch["regions"][0] == -1).all() and batch["regions"][1].tolist() == regions.tolist()
    assert batch["image"].shape == (2, 3, 4, 5) and batch["image"].dtype == torch.uint8
    assert (batch["mask"][0] == IGNORE_INDEX).all() and (batch["mask"][1] == 1).all()
    assert [len(p) for p in batch["points"]] == [1, 0]
    assert batch["tags"].tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert batch["has"]["points"].tolist() == [True, False]
    assert batch["has"]["mask"].tolist() == [False, True]
    assert batch["valid"][0].all() and batch["valid"][1].sum() == 6 and batch["valid"][1, :2, :3].all()


def test_rasterize_points_disk_and_nearest_wins() -> None:
    pts = [torch.tensor([[2.0, 2.0, 1.0], [5.0, 2.0, 2.0]]), torch.zeros(0, 3)]
    out = rasterize_points(pts, 5, 8, radius=2)
    assert out.shape == (2, 5, 8) and (out[1] == IGNORE_INDEX).all()
    expected = torch.full((5, 8), IGNORE_INDEX)
    for r in range(5):
        for c in range(8):
            d1, d2 = (r - 2) ** 2 + (c - 2) ** 2, (r - 2) ** 2 + (c - 5) ** 2
            if min(d1, d2) <= 4:
                expected[r, c] = 1 if d1 < d2 else 2 if d2 < d1 else expected[r, c]
    decided = expected != IGNORE_INDEX
    assert torch.equal(out[0][decided], expected[decided])
    ties = ((torch.arange(8) - 2) ** 2 == (torch.arange(8) - 5) ** 2).nonzero()
    assert ties.numel() == 0  # no exact ties on this grid, so the check above covers every pixel


def test_dilate_labels_keeps_existing_labels() -> None:
    labels = torch.full((1, 5, 5), IGNORE_INDEX)
    labels[0, 2, 2] = 3
    labels[0, 0, 0] = 1
    out = dilate_labels(labels, 1)
    assert out[0, 2, 2] == 3 and out[0, 0, 0] == 1
    assert out[0, 1, 2] == 3 and out[0, 0, 1] == 1 and out[0, 1, 1] == IGNORE_INDEX


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_dilate_labels_takes_a_nearest_label_within_the_radius(radius: int) -> None:
    """Against a loop over every (pixel, labelled pixel) pair: a pixel takes one of the labels at its smallest
    squared distance ≤ radius², and stays unlabelled when there is none."""
    g = torch.Generator().manual_seed(radius)
    labels = torch.full((2, 9, 11), IGNORE_INDEX)
    marked = torch.rand(labels.shape, generator=g) < 0.08
    labels[marked] = torch.randint(0, 4, (int(marked.sum()),), generator=g)
    out = dilate_labels(labels, radius)
    for b, y, x in itertools.product(range(2), range(9), range(11)):
        nearest: dict[int, set[int]] = {}
        for v, u in marked[b].nonzero().tolist():
            nearest.setdefault((v - y) ** 2 + (u - x) ** 2, set()).add(int(labels[b, v, u]))
        d2 = min((d for d in nearest if d <= radius * radius), default=None)
        if d2 is None:
            assert out[b, y, x] == IGNORE_INDEX
        else:
            assert int(out[b, y, x]) in nearest[d2]
