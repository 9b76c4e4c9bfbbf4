"""The pseudo-label stage's seed scores at every background threshold, against one confusion matrix per threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weakseg.data.classes import IGNORE_INDEX, VOC
from weakseg.data.sample import Sample
from weakseg.engine.metrics import ConfusionMatrix
from weakseg.engine.pseudo_labels import PseudoLabeller, classes_by_box_area, threshold_confusions
from weakseg.errors import ConfigError
from weakseg.pseudo.cam import SEED_THRESHOLDS, PseudoLabelConfig, filled_boxes, label_scores


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


def box_sample(boxes: list[list[float]]) -> Sample:
    image = np.full((12, 16, 3), 100, np.uint8)
    return Sample("b", image, boxes=np.array(boxes, dtype=np.float32), maps={})


def test_without_a_model_boxes_are_labelled_by_their_prior_and_the_smaller_box_wins() -> None:
    cfg = PseudoLabelConfig(box_prior="box", refine="none")  # the CAM weight does not count without a model
    labeller = PseudoLabeller(None, VOC, cfg, torch.device("cpu"))
    boxes = [[0.0, 0.0, 12.0, 10.0, 3], [4.0, 2.0, 8.0, 6.0, 7], [10.0, 6.0, 16.0, 12.0, 2]]
    maps = labeller(box_sample(boxes), "boxes")
    expected = filled_boxes(torch.tensor(boxes), 12, 16, 0)
    assert torch.equal(maps.pseudo, expected) and torch.equal(maps.seed, expected)


def test_classes_by_box_area_put_the_smallest_box_first() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0, 3], [0.0, 0.0, 2.0, 2.0, 5], [0.0, 0.0, 3.0, 3.0, 3], [0, 0, 5, 5, 0]])
    assert classes_by_box_area(boxes, background=0) == [5, 3]


def test_labelling_without_a_model_needs_a_refiner_without_features() -> None:
    with pytest.raises(ConfigError, match="features"):
        PseudoLabeller(None, VOC, PseudoLabelConfig(refine="random_walk"), torch.device("cpu"))


def test_tags_need_a_model() -> None:
    cfg = PseudoLabelConfig(refine="none")
    labeller = PseudoLabeller(None, VOC, cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match="only boxes"):
        labeller(box_sample([]).replace(tags=np.array([3])), "tags")


def test_the_rest_of_a_box_can_be_left_out_of_the_training_labels() -> None:
    priors = PseudoLabelConfig(box_prior="grabcut", box_rest="ignore", refine="none")
    image = np.full((40, 40, 3), (90, 120, 90), np.uint8)
    image[12:28, 12:28] = (200, 40, 40)  # the object fills the middle of its box
    sample = Sample("b", image, boxes=np.array([[6.0, 6.0, 34.0, 34.0, 5]], np.float32), maps={})
    maps = PseudoLabeller(None, VOC, priors, torch.device("cpu"))(sample, "boxes")
    assert (maps.pseudo[12:28, 12:28] == 5).all() and (maps.pseudo[:6] == 0).all()  # object, and outside the box
    assert (maps.pseudo[7:10, 7:33] == IGNORE_INDEX).all()  # inside the box, off the object
    assert (maps.seed[7:10, 7:33] == 0).all()  # the dense seed keeps its background


def test_box_rest_is_checked() -> None:
    with pytest.raises(ConfigError, match="box_rest"):
        PseudoLabelConfig(box_rest="drop").check()
