"""SPML's labelling of the training images: per-class maximum, the image's classes, the walk, the arg-max."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.methods.test_cam import VOC
from weakseg.data.sample import Sample
from weakseg.engine.relabel import LABELLERS, class_normalised, image_classes

# Softmax of two pixels over background, class 1 and class 2 (A: 0.3 / 0.2 / 0.5, B: 0.6 / 0.1 / 0.3).
PROBS = torch.tensor([[0.3, 0.6], [0.2, 0.1], [0.5, 0.3]])[:, None, :]  # 3×1×2


class FixedModel(nn.Module):
    """Puts out the logits of ``PROBS`` (classes 3..20 at a tiny probability) and a constant embedding."""

    mean_std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def forward(self, x: torch.Tensor) -> dict:
        probs = torch.full((1, VOC.num_classes, 1, 2), 1e-6)
        probs[0, :3] = PROBS
        return {"logits": probs.log(), "embedding": torch.ones(1, 4, 1, 2)}


def test_each_class_is_divided_by_its_maximum_and_absent_classes_are_zeroed() -> None:
    present = torch.tensor([True, True, False])
    want = torch.tensor([[0.5, 1.0], [1.0, 0.5], [0.0, 0.0]])[:, None, :]
    torch.testing.assert_close(class_normalised(PROBS, present), want)


def test_the_image_classes_are_its_weak_labels_and_the_background() -> None:
    sample = Sample("a", np.zeros((1, 2, 3), np.uint8), points=np.array([[0.0, 0.0, 1.0]], np.float32))
    assert image_classes(sample, VOC.num_classes, 0, 255).nonzero()[:, 0].tolist() == [0, 1]


def test_labels_are_the_argmax_of_the_normalised_scores_of_the_image_s_classes() -> None:
    """A: class 2 has the highest softmax but the image has no class 2; of the rest, the background (0.3) beats class
    1 (0.2) unless each class is divided by its maximum (0.5 vs 1.0). B: the background either way."""
    sample = Sample("a", np.zeros((1, 2, 3), np.uint8), points=np.array([[0.0, 0.0, 1.0]], np.float32))
    labeller = LABELLERS["spml-no-walk"](FixedModel(), VOC, torch.device("cpu"), crf=False)
    assert labeller(sample).tolist() == [[1, 0]]
    walked = LABELLERS["spml"](FixedModel(), VOC, torch.device("cpu"), crf=False)
    # The walk runs on the grid pooled ×2 (one cell here): class 1 and the background tie at 0.75 → the first.
    assert walked(sample).tolist() == [[0, 0]]
