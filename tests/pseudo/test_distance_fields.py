"""PMP's expanding distance fields against scipy's distance transform; the expansion score against hand-computed
sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from weakseg.pseudo.distance_fields import ExpansionScore, aggregate_fields, expand_fields, proximity_fields


def test_proximity_fields_match_scipy_distance_transform() -> None:
    points = torch.tensor([[2.0, 1.0, 3.0], [7.0, 5.0, 3.0], [0.0, 6.0, 0.0], [9.0, 0.0, 0.0]])
    fields = proximity_fields(points, 8, 10, [3, 0, 5])
    for k, c in enumerate((3, 0)):
        seeds = np.ones((8, 10), bool)
        for x, y, cls in points.tolist():
            if cls == c:
                seeds[int(y), int(x)] = False
        distance = ndimage.distance_transform_edt(seeds)
        np.testing.assert_allclose(fields[k].numpy(), 1 - distance / distance.max(), atol=1e-6)
    assert fields[1, 6, 0] == 1.0 and fields[0].min() == 0.0
    assert (fields[2] == 0).all()  # a class without points


def test_aggregation_suppresses_objects_near_background_points() -> None:
    objects = torch.full((2, 3, 3), 0.8)
    background = torch.zeros(3, 3)
    background[0, 0] = 1.0
    out = aggregate_fields(objects, background)
    assert out[:, 0, 0].tolist() == [0.0, 0.0] and torch.allclose(out[:, 1:, 1:], torch.full((2, 2, 2), 0.8))


def test_expansion_adds_the_scores_and_clips() -> None:
    objects = torch.tensor([[[0.2, 0.95]], [[0.0, 0.0]]])
    background = torch.tensor([[0.5, -0.1]])
    expanded, bg = expand_fields(objects, background, object_score=0.1, background_score=-0.6)
    torch.testing.assert_close(expanded, torch.tensor([[[0.3, 1.0]], [[0.0, 0.0]]]))  # absent class stays 0
    torch.testing.assert_close(bg, torch.tensor([[0.0, 0.0]]))


def test_expansion_score_follows_the_loss_ratio_with_limits() -> None:
    """Hand-computed: losses 10, 9.9, 9.0, 9.5, 9.5 → γ = –, 0.0101, 0.1 (capped 0.025), −0.0526 (capped −0.025), 0."""
    score = ExpansionScore()
    steps = [score.update(loss) for loss in (10.0, 9.9, 9.0, 9.5, 9.5)]
    assert steps == pytest.approx([0.0, 10 / 9.9 - 1, 0.025, -0.025, 0.0])
    assert score.background == pytest.approx(10 / 9.9 - 1)
    assert score.objects == pytest.approx(2 * (10 / 9.9 - 1))  # objects expand twice as fast
    restored = ExpansionScore()
    restored.load_state_dict(score.state_dict())
    assert restored.update(9.0) == score.update(9.0)
