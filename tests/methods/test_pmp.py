"""PMP's method: on-the-fly pseudo-masks (refined output ⊙ expanded fields,
threshold, blots, points), the per-epoch expansion, the state in checkpoints."""

from __future__ import annotations

import pytest
import torch

from tests.methods.test_cam import VOC
from weakseg.errors import ConfigError
from weakseg.methods import build_method


def _batch(size: int = 32) -> dict:
    blots = torch.full((1, size, size), 255)
    blots[0, 0:4, 0:4] = 0  # a background blot in the corner
    return {
        "image": torch.full((1, 3, size, size), 128, dtype=torch.uint8),
        "points": [torch.tensor([[20.0, 20.0, 5.0], [2.0, 2.0, 0.0]])],
        "blots": blots,
    }


def test_pseudo_masks_threshold_the_fields_and_keep_blots_and_points() -> None:
    method = build_method("pmp", {"use_refiner": False}, "points", VOC)
    method.score.objects = 0.3  # fields expanded by a few epochs of progress
    logits = torch.full((1, VOC.num_classes, 8, 8), -10.0)
    logits[:, 5] = 10.0  # the network says class 5 everywhere
    batch = _batch()
    target = method.pseudo_masks(logits, batch)[0]
    fields = method.fields(batch["points"], VOC.num_classes, 8, 8, 32, 32)[0]
    near = (fields[5] >= 0.75).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert 0 < near.sum() < near.numel()
    rest = torch.ones(32, 32, dtype=torch.bool)
    rest[:4, :4] = rest[20, 20] = rest[2, 2] = False  # the blot and the points
    assert torch.equal(target[rest], torch.where(near, 5, 255)[rest])  # class 5 only where its field reaches 0.75
    assert (target[:4, :4] == 0).all()  # the background blot
    assert target[20, 20] == 5 and target[2, 2] == 0  # the points
    assert (fields[1] == 0).all() and fields[0].max() > 0.95  # an absent class; the background at its point
    method.score.objects = 0.0
    assert method.fields(batch["points"], VOC.num_classes, 8, 8, 32, 32)[0, 5].max() < 0.75  # not yet expanded


def test_expansion_updates_once_per_epoch_and_travels_in_the_state(tmp_path) -> None:
    from weakseg.data.dataset import DataConfig

    method = build_method("pmp", {"use_refiner": False, "use_blots": False}, "points", VOC)
    method.bind(DataConfig(root=str(tmp_path)), tmp_path, num_images=2)
    logits = torch.randn(1, VOC.num_classes, 8, 8, requires_grad=True)
    batch = _batch()
    losses = [float(method.loss({"logits": logits}, batch)[0].detach()) for _ in range(4)]
    assert method.score.previous_loss == pytest.approx(losses[2] + losses[3])  # 2 epochs of 2 images
    state = method.state_dict()
    fresh = build_method("pmp", {"use_refiner": False, "use_blots": False}, "points", VOC)
    fresh.load_state_dict(state)
    assert fresh.score == method.score and fresh.seen == method.seen


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        build_method("pmp", {"threshold": 0}, "points", VOC)
    with pytest.raises(ConfigError, match="trains from points"):
        build_method("pmp", None, "scribbles", VOC)
