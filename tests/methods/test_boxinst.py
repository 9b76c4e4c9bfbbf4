"""``boxinst``: background outside the boxes, the box terms on the box classes, the pairwise ramp."""

from __future__ import annotations

import pytest
import torch

from weakseg.data.classes import CAMVID, VOC
from weakseg.errors import ConfigError
from weakseg.methods import build_method


def batch_with_a_box(height: int = 32, width: int = 32) -> dict:
    image = torch.full((1, 3, height, width), 120.0)
    image[:, 0, 8:24, 4:20] = 220.0  # a red object filling its box
    return {
        "image": image,
        "valid": torch.ones(1, height, width, dtype=torch.bool),
        "boxes": [torch.tensor([[4.0, 8.0, 20.0, 24.0, 7.0]])],
    }


def perfect_logits(height: int = 32, width: int = 32, margin: float = 30.0) -> torch.Tensor:
    logits = torch.zeros(1, 21, height, width)
    logits[:, 0] = margin
    logits[:, 0, 8:24, 4:20] = 0.0
    logits[:, 7, 8:24, 4:20] = margin
    return logits


def test_a_prediction_that_fills_the_box_with_its_class_costs_nothing() -> None:
    method = build_method("boxinst", None, "boxes", VOC)
    method.begin_step(99, 100)
    loss, terms = method.loss({"logits": perfect_logits()}, batch_with_a_box())
    assert set(terms) == {"ce", "proj", "pairwise"}
    assert loss.item() == pytest.approx(0.0, abs=1e-4)


def test_each_term_reacts_to_its_own_mistake() -> None:
    method = build_method("boxinst", None, "boxes", VOC)
    method.begin_step(99, 100)
    batch = batch_with_a_box()
    outside = perfect_logits()
    outside[:, 7, 0:4, :] = 60.0  # class 7 above the box, where every pixel is background
    _, terms = method.loss({"logits": outside}, batch)
    assert terms["ce"] > 1.0
    shrunk = perfect_logits()
    shrunk[:, 7, 8:24, 12:20] = 0.0  # the right half of the box left to background: columns project empty
    shrunk[:, 0, 8:24, 12:20] = 30.0
    _, terms = method.loss({"logits": shrunk}, batch)
    assert terms["proj"] > 0.1 and terms["ce"] < 1e-6
    assert terms["pairwise"] > 0.5  # the cut runs through the uniformly red object


def test_the_pairwise_term_ramps_in() -> None:
    method = build_method("boxinst", {"pairwise_warmup": 0.5}, "boxes", VOC)
    method.begin_step(0, 100)
    _, terms = method.loss({"logits": perfect_logits()}, batch_with_a_box())
    assert "pairwise" not in terms
    method.begin_step(25, 100)
    assert method.ramp() == pytest.approx(0.5)
    method.begin_step(80, 100)
    assert method.ramp() == 1.0


def test_boxinst_needs_a_background_class() -> None:
    with pytest.raises(ConfigError, match="background"):
        build_method("boxinst", None, "boxes", CAMVID)
