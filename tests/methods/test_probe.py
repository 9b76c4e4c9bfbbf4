"""The linear probe: pooled view features of a frozen backbone and a CAM head fitted on them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.methods.test_cam import VOC, _model
from weakseg.errors import ConfigError
from weakseg.methods import Fit, PseudoLabel, Train, build_method
from weakseg.models.segmentor import ModelConfig


def test_the_probe_fits_then_labels_then_segments() -> None:
    method = build_method("probe", None, "tags", VOC)
    plan = method.plan(method.supervision, method.args)
    assert plan[0] == Fit("cam") and plan[1] == PseudoLabel("pseudo", source="cam")
    assert isinstance(plan[2], Train) and plan[2].labels_from == "pseudo"
    assert not type(method).trains_by_steps("tags") and build_method("cam", None, "tags", VOC).trains_by_steps("tags")
    with pytest.raises(ConfigError, match="probe reads the backbone's own pre-pooling layers"):
        build_method("probe", {"neck": "none"}, "tags", VOC)
    with pytest.raises(ConfigError, match="scales must be positive"):
        build_method("probe", {"scales": [0.0]}, "tags", VOC)
    with pytest.raises(ConfigError, match="must be a CAM learner"):  # no gradient steps for PPC's terms to join
        build_method("ppc", {"base": "probe"}, "tags", VOC)


def test_view_features_pool_the_neck_at_every_scale_and_mirror() -> None:
    torch.manual_seed(0)
    model = _model()
    method = build_method("probe", {"scales": [1.0, 0.5]}, "tags", VOC)
    method.setup(model, ModelConfig(pretrained=False))
    model.eval()
    image = torch.randn(1, 3, 64, 48)
    views = method.view_features(model, image)
    neck = model.heads["cam"].neck
    assert views.shape == (4, neck[0].out_channels)
    mirrored_half = F.interpolate(image, (32, 24), mode="bilinear").flip(-1)
    with torch.no_grad():
        expected = neck(model.backbone(mirrored_half)[-1]).mean((2, 3))[0]
    torch.testing.assert_close(views[3], expected)


def test_the_fitted_head_separates_the_classes_and_leaves_the_background_at_zero() -> None:
    torch.manual_seed(0)
    model = _model()
    method = build_method("probe", {"l2": 1e-4}, "tags", VOC)
    method.setup(model, ModelConfig(pretrained=False))
    channels = model.heads["cam"].classifier.in_channels
    classes = torch.zeros(12, VOC.num_classes)
    classes[torch.arange(12), torch.arange(12) % 3 + 1] = 1.0  # classes 1, 2, 3 in turn
    prototypes = torch.rand(VOC.num_classes, channels)
    features = (classes @ prototypes)[:, None].repeat(1, 2, 1) + 0.05 * torch.rand(12, 2, channels)
    fit = method.fit_head(model, features, classes)
    assert fit["iterations"] >= 1 and fit["soft_margin"] < 0.2
    weight = model.heads["cam"].classifier.weight[:, :, 0, 0]
    assert (weight[0] == 0).all()  # the background is no CAM
    scores = features[:, 0] @ weight.T
    assert torch.equal(scores[:, 1:4].argmax(1), torch.arange(12) % 3)
