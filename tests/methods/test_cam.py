"""CAM learners: the classifier head, tags from tags or from the boxes in the crop, the HFPL loss terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.data.classes import get_class_set
from weakseg.errors import ConfigError
from weakseg.methods import build_method
from weakseg.models import build_model
from weakseg.models.segmentor import ModelConfig

VOC = get_class_set("voc")


def _model():
    return build_model(ModelConfig(pretrained=False, head_channels=16, channels_last=False), VOC.num_classes)


def _batch(b: int = 2, size: int = 64) -> dict:
    tags = torch.zeros(b, VOC.num_classes)
    tags[0, [5, 9]] = 1
    tags[1, 12] = 1
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0, 3.0]]), torch.zeros(0, 5)]
    return {
        "image": torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8),
        "tags": tags,
        "boxes": boxes,
        "valid": torch.ones(b, size, size, dtype=torch.bool),
    }


def test_cam_head_runs_without_the_decoder() -> None:
    model = _model()
    build_method("cam", None, "tags", VOC).setup(model, ModelConfig(pretrained=False))
    out = model(torch.randn(1, 3, 64, 64), decode=False)
    assert "logits" not in out and "decoder" not in out
    assert out["cam"].shape == (1, VOC.num_classes, 4, 4)


@pytest.mark.parametrize(("neck", "classifier_in"), [("pretrained", 1280), ("none", 320)])
def test_cam_head_neck(neck: str, classifier_in: int) -> None:
    model = _model()
    build_method("cam", {"neck": neck}, "tags", VOC).setup(model, ModelConfig(pretrained=False))
    assert model.heads["cam"].classifier.in_channels == classifier_in
    assert model(torch.randn(1, 3, 64, 64), decode=False)["cam"].shape == (1, VOC.num_classes, 4, 4)


def test_cam_loss_is_the_multilabel_soft_margin_of_pooled_scores() -> None:
    method = build_method("cam", None, "tags", VOC)
    scores = torch.randn(2, VOC.num_classes, 4, 4, requires_grad=True)
    batch = _batch()
    loss, terms = method.loss({"cam": scores}, batch)
    fg = list(range(1, VOC.num_classes))
    expected = F.multilabel_soft_margin_loss(scores[:, fg].mean((2, 3)), batch["tags"][:, fg])
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"cls"}
    loss.backward()
    assert scores.grad[:, 0].abs().sum() == 0  # the background channel is not a class of the classifier


def test_box_supervision_takes_tags_from_the_boxes_in_the_crop() -> None:
    method = build_method("cam", None, "boxes", VOC)
    tags = method.image_tags(_batch())
    expected = torch.zeros(2, VOC.num_classes - 1)
    expected[0, 2] = 1  # class 3 is foreground index 2
    assert torch.equal(tags, expected)


def test_padding_is_left_out_of_the_pooling() -> None:
    method = build_method("cam", None, "tags", VOC)
    batch = _batch()
    batch["valid"][:, :, 32:] = False
    scores = torch.randn(2, VOC.num_classes, 4, 4)
    loss, _ = method.loss({"cam": scores}, batch)
    fg = list(range(1, VOC.num_classes))
    expected = F.multilabel_soft_margin_loss(scores[:, fg, :, :2].mean((2, 3)), batch["tags"][:, fg])
    torch.testing.assert_close(loss, expected)


def test_hfpl_adds_sampling_and_similarity() -> None:
    torch.manual_seed(0)
    method = build_method("hfpl", {"fsl_window": 2}, "tags", VOC)
    scores = torch.randn(2, VOC.num_classes, 8, 8, requires_grad=True)
    loss, terms = method.loss({"cam": scores}, _batch())
    assert set(terms) == {"cls", "fsl"} and torch.isfinite(loss)
    torch.testing.assert_close(loss, terms["cls"] + terms["fsl"])
    loss.backward()
    assert scores.grad.abs().sum() > 0


def test_hfpl_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="method_args"):
        build_method("hfpl", {"samples": 0}, "tags", VOC)
    with pytest.raises(ConfigError, match="method_args.sigmaa"):
        build_method("hfpl", {"sigmaa": 3}, "tags", VOC)
    with pytest.raises(ConfigError, match="trains from tags, boxes"):
        build_method("cam", None, "points", VOC)
    with pytest.raises(ConfigError, match="method_args.neck must be one of pretrained, none"):
        build_method("hfpl", {"neck": "imagenet"}, "tags", VOC)


def test_seam_sees_the_rescaled_crop_and_ties_the_views() -> None:
    torch.manual_seed(0)
    model = _model()
    method = build_method("seam", {"view_size": 32}, "tags", VOC)
    method.setup(model, ModelConfig(pretrained=False))
    batch = _batch()
    outputs = method.forward(model, torch.randn(2, 3, 64, 64))
    assert outputs["cam"].shape[-2:] == (4, 4) and outputs["target_view"]["cam"].shape[-2:] == (2, 2)
    loss, terms = method.loss(outputs, batch)
    assert set(terms) == {"cls", "er"} and terms["er"] > 0
    cam = build_method("cam", None, "tags", VOC)
    both = (cam.loss(outputs, batch)[0] + cam.loss(outputs["target_view"], batch)[0]) / 2
    torch.testing.assert_close(terms["cls"], both.detach())
    torch.testing.assert_close(loss, terms["cls"] + terms["er"])
    loss.backward()
    assert model.heads["cam"].classifier.weight.grad.abs().sum() > 0


def test_seam_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="view_size must be at least 32"):
        build_method("seam", {"view_size": 8}, "tags", VOC)


def test_hfpl_fsl_follows_the_reference_code_by_default() -> None:
    """Min-max normalised class maps and the background channel (``train_cam_voc.py``); the paper's r on request."""
    method = build_method("hfpl", {}, "tags", VOC)
    assert method.similarity.normalise == "minmax" and method.similarity.background
    paper = build_method("hfpl", {"fsl_normalise": "max", "fsl_background": False}, "tags", VOC)
    assert paper.similarity.normalise == "max" and not paper.similarity.background
    with pytest.raises(ConfigError, match="normalise must be one of max, minmax"):
        build_method("hfpl", {"fsl_normalise": "l2"}, "tags", VOC)
