"""The pseudo-label stage's seed scores at every background threshold, against one confusion matrix per threshold."""

from __future__ import annotations

import pytest
import torch

from weakseg.data.classes import IGNORE_INDEX
from weakseg.engine.metrics import ConfusionMatrix
from weakseg.engine.pseudo_labels import threshold_confusions
from weakseg.pseudo.cam import SEED_THRESHOLDS, label_scores


@pytest.mark.parametrize("background", [0, None])
def test_threshold_confusions_equal_one_matrix_per_threshold(background: int | None) -> None:
    generator = torch.Generator().manual_seed(0)
    k, classes = 6, [2, 3, 5]
    # Scores on the thresholds' own grid, so that ties between a score and a threshold, and between classes, occur.
    fg = torch.randint(0, 101, (len(classes), 9, 11), generator=generator).float() / 100
    target = torch.randint(0, k, (9, 11), generator=generator)
    target[0, :4] = IGNORE_INDEX
    peak, top = fg.amax(0), torch.tensor(classes)[fg.argmax(0)]
    scored_background = 0 if background is None else background
    fast = threshold_confusions(peak, top, scored_background, target, k, IGNORE_INDEX)
    assert fast.shape == (len(SEED_THRESHOLDS), k, k)
    for j, t in enumerate(SEED_THRESHOLDS):
        seed = label_scores(fg, classes, background, "threshold", t)
        slow = ConfusionMatrix(k)
        slow.update(torch.where(seed == IGNORE_INDEX, 0, seed), target)
        assert torch.equal(fast[j], slow.matrix), t


def test_threshold_confusions_of_an_image_without_classes_are_all_background() -> None:
    target = torch.tensor([[0, 1], [2, IGNORE_INDEX]])
    counts = threshold_confusions(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64), 0, target, 3, IGNORE_INDEX)
    assert torch.equal(counts[0], torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0, 0]]))
    assert torch.equal(counts[-1], counts[0])
