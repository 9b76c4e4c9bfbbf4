"""PPC as an add-on to the CAM learners: the projector beside the CAM classifier, the second view, the loss terms."""

from __future__ import annotations

import pytest
import torch

from tests.methods.test_cam import VOC, _batch, _model
from tests.methods.test_spml import stage_names
from weakseg.errors import ConfigError
from weakseg.methods import build_method
from weakseg.models.segmentor import ModelConfig


@pytest.mark.parametrize("base", ["seam", "cam", "hfpl"])
def test_ppc_adds_the_contrast_to_any_cam_learner(base: str) -> None:
    torch.manual_seed(0)
    model = _model()
    # Four prototypes in this batch (classes 5, 9, 12, background): mining drops 1 negative, not 3, to leave some.
    method = build_method("ppc", {"base": base, "view_size": 32, "top_k": 4, "mining": [1, 10]}, "tags", VOC)
    method.setup(model, ModelConfig(pretrained=False))
    assert type(method.base).name == base and stage_names(method) == ["cam", "pseudo", "seg"]
    outputs = method.forward(model, torch.randn(2, 3, 64, 64))
    assert outputs["projection"].shape == (2, 128, 4, 4)
    assert outputs["target_view"]["projection"].shape == (2, 128, 2, 2)
    torch.testing.assert_close(outputs["projection"].norm(dim=1), torch.ones(2, 4, 4))
    assert (outputs["projection"] >= 0).all()  # ReLU before the normalisation
    batch = _batch()
    loss, terms = method.loss(outputs, batch)
    base_loss, base_terms = method.base.loss(outputs, batch)
    assert set(terms) == set(base_terms) | {"cp", "cc", "intra"}
    assert terms["cp"] > 0 and terms["cc"] > 0 and terms["intra"] > 0
    if base != "hfpl":  # ISL draws pixels at random: the base loss differs between two calls
        contrast = 0.1 * (terms["cp"] + terms["cc"]) + 0.1 * terms["intra"]
        torch.testing.assert_close(loss.detach(), base_loss.detach() + contrast)
    loss.backward()
    assert model.heads["projection"][1].net[0].weight.grad.abs().sum() > 0


def test_the_projector_reads_the_cam_classifier_s_features() -> None:
    model = _model()
    build_method("ppc", {"base": "cam"}, "tags", VOC).setup(model, ModelConfig(pretrained=False))
    assert model.heads["projection"][0] is model.heads["cam"].neck  # shared, not a copy
    assert model.heads["projection"][1].net[0].in_channels == 1280
    model_none = _model()
    build_method("ppc", {"base": "cam", "base_args": {"neck": "none"}}, "tags", VOC).setup(
        model_none, ModelConfig(pretrained=False)
    )
    assert model_none.heads["projection"][1].net[0].in_channels == 320


def test_view_size_reaches_a_two_view_base() -> None:
    assert build_method("ppc", {"view_size": 64}, "tags", VOC).base.args.view_size == 64
    assert build_method("ppc", {"base_args": {"view_size": 96}}, "tags", VOC).base.args.view_size == 96


def test_ppc_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="method_args.base must be a CAM learner"):
        build_method("ppc", {"base": "rloss"}, "tags", VOC)
    with pytest.raises(ConfigError, match="method_args.base_args.sigmaa"):
        build_method("ppc", {"base": "hfpl", "base_args": {"sigmaa": 2}}, "tags", VOC)
    with pytest.raises(ConfigError, match="temperature"):
        build_method("ppc", {"temperature": 0}, "tags", VOC)
    with pytest.raises(ConfigError, match="'method_args.mining' must have 2 items"):
        build_method("ppc", {"mining": [3]}, "tags", VOC)
    with pytest.raises(ConfigError, match="trains from tags, boxes"):
        build_method("ppc", None, "points", VOC)
