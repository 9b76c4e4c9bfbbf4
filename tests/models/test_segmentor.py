"""The segmentation model: output strides of DeepLab-v3/v3+, auxiliary heads, tiny batches and gradient flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weakseg.errors import ConfigError
from weakseg.models import ASPP, CAMHead, ModelConfig, ProjectionHead, SegmentationModel, build_model

K = 5
SIZE = 64


def images(b: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def model_with(**kwargs) -> SegmentationModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(pretrained=False, **kwargs), num_classes=K)


@pytest.fixture(scope="module")
def plus_model() -> SegmentationModel:
    return model_with()


def test_deeplabv3plus_logits_at_stride_4(plus_model: SegmentationModel) -> None:
    out = plus_model.eval()(images(2))
    assert out["logits"].shape == (2, K, SIZE // 4, SIZE // 4)
    assert out["decoder"].shape == (2, 128, SIZE // 4, SIZE // 4)
    assert [f.shape[-1] for f in out["features"]] == [SIZE // 4, SIZE // 16]
    assert plus_model.backbone.info.reductions == (4, 16)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3_logits_at_output_stride(output_stride: int) -> None:
    model = model_with(head="deeplabv3", output_stride=output_stride, head_channels=32).eval()
    with torch.no_grad():
        out = model(images(2))
    side = SIZE // output_stride
    assert out["logits"].shape == (2, K, side, side)
    assert out["features"][-1].shape[-2:] == (side, side)
    assert model.backbone.info.reductions[-1] == output_stride


def test_deeplabv3plus_at_output_stride_8_still_returns_stride_4() -> None:
    model = model_with(output_stride=8, head_channels=32).eval()
    with torch.no_grad():
        out = model(images(1))
    assert out["logits"].shape == (1, K, SIZE // 4, SIZE // 4)
    assert out["features"][-1].shape[-1] == SIZE // 8


def test_odd_input_size_keeps_decoder_and_skip_aligned() -> None:
    model = model_with(head_channels=32).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 90))
    assert out["logits"].shape[-2:] == out["features"][0].shape[-2:]


def test_aux_heads_appear_with_right_shapes_and_unit_norm_projection() -> None:
    model = model_with(head_channels=32)
    model.add_head("cam", CAMHead(model.head_input_channels("backbone"), K), source="backbone")
    model.add_head("proj", ProjectionHead(model.head_input_channels("decoder"), dim=16, hidden=24), source="decoder")
    model.eval()
    with torch.no_grad():
        out = model(images(2))
    assert out["cam"].shape == (2, K, SIZE // 16, SIZE // 16)
    assert out["proj"].shape == (2, 16, SIZE // 4, SIZE // 4)
    norms = out["proj"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert set(out) == {"logits", "decoder", "features", "cam", "proj"}


def test_cam_head_is_a_linear_map_of_the_backbone_features() -> None:
    model = model_with(head_channels=32)
    model.add_head("cam", CAMHead(model.head_input_channels("backbone"), K), source="backbone")
    model.eval()
    with torch.no_grad():
        out = model(images(1))
        expected = torch.einsum("kc,bchw->bkhw", model.heads["cam"].classifier.weight[:, :, 0, 0], out["features"][-1])
    assert torch.allclose(out["cam"], expected, atol=1e-4)


def test_duplicate_or_reserved_head_name_raises() -> None:
    model = model_with(head_channels=32)
    model.add_head("cam", CAMHead(model.head_input_channels("backbone"), K), source="backbone")
    with pytest.raises(ValueError, match="already exists"):
        model.add_head("cam", CAMHead(model.head_input_channels("backbone"), K), source="backbone")
    for reserved in ("logits", "decoder", "features"):
        with pytest.raises(ValueError, match="already exists"):
            model.add_head(reserved, ProjectionHead(32), source="decoder")


def test_unknown_head_source_is_config_error(plus_model: SegmentationModel) -> None:
    with pytest.raises(ConfigError, match="head input must be one of"):
        plus_model.add_head("x", ProjectionHead(32), source="encoder")
    with pytest.raises(ConfigError):
        plus_model.head_input_channels("features")
    assert "x" not in plus_model.heads


def test_unknown_decoder_head_is_config_error() -> None:
    with pytest.raises(ConfigError, match="model.head"):
        build_model(ModelConfig(pretrained=False, head="unet"), num_classes=K)


@pytest.mark.parametrize("training", [False, True])
def test_batch_of_one_works_in_eval_and_train(training: bool) -> None:
    model = model_with(head_channels=32).train(training)
    out = model(images(1))
    assert out["logits"].shape == (1, K, SIZE // 4, SIZE // 4)
    assert torch.isfinite(out["logits"]).all()


def test_aspp_image_pooling_branch_at_batch_one_eval() -> None:
    torch.manual_seed(0)
    aspp = ASPP(16, 8, rates=(1, 2, 3)).eval()
    x = torch.randn(1, 16, 5, 7)
    with torch.no_grad():
        y = aspp(x)
        pooled = aspp.pool(x)
    assert y.shape == (1, 8, 5, 7)
    assert pooled.shape == (1, 8, 1, 1)
    # a global (image-level) branch: changing one far-away pixel changes the output everywhere
    x2 = x.clone()
    x2[0, :, 4, 6] += 10.0
    with torch.no_grad():
        y2 = aspp(x2)
    assert not torch.allclose(y[0, :, 0, 0], y2[0, :, 0, 0])


def test_gradients_reach_backbone_decoder_classifier_and_heads() -> None:
    model = model_with(head_channels=32)
    model.add_head("cam", CAMHead(model.head_input_channels("backbone"), K), source="backbone")
    model.add_head("proj", ProjectionHead(model.head_input_channels("decoder"), dim=8), source="decoder")
    model.train()
    out = model(images(2))
    target = torch.randint(0, K, out["logits"].shape[:1] + out["logits"].shape[2:])
    loss = torch.nn.functional.cross_entropy(out["logits"], target)
    loss = loss + out["cam"].mean() + out["proj"][:, 0].mean()
    loss.backward()
    for name in ("backbone.body.conv_stem.weight", "decoder.aspp.pool.1.weight", "classifier.1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    for name, head in model.heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_mean_std_follow_the_backbone(plus_model: SegmentationModel) -> None:
    mean, std = plus_model.mean_std
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)  # tf_ lite0: TF (inception) normalisation


def test_channels_last_model_matches_default_layout() -> None:
    a, b = model_with(head_channels=32).eval(), model_with(head_channels=32, channels_last=True).eval()
    x = images(1)
    with torch.no_grad():
        ya = a(x)["logits"]
        yb = b(x.contiguous(memory_format=torch.channels_last))["logits"]
    assert torch.allclose(ya, yb, atol=1e-4)


def test_aspp_rates_default_and_configured() -> None:
    def dilations(model: SegmentationModel) -> list[int]:
        return [b[0].dilation[0] for b in model.decoder.aspp.branches[1:]]

    assert dilations(model_with()) == [6, 12, 18]
    assert dilations(model_with(output_stride=8)) == [12, 24, 36]
    assert dilations(model_with(aspp_rates=(3, 6, 9))) == [3, 6, 9]


def test_classifier_can_read_a_decoder_head_but_not_a_backbone_one() -> None:
    model = build_model(ModelConfig(pretrained=False, head_channels=16, channels_last=False), 3)
    model.add_head("emb", ProjectionHead(16, 8), "decoder")
    model.add_head("cam", CAMHead(320, 3), "backbone")
    with pytest.raises(ValueError, match="decoder or a head fed by it, not 'cam'"):
        model.set_classifier(torch.nn.Conv2d(8, 3, 1), source="cam")
    model.set_classifier(torch.nn.Conv2d(8, 3, 1), source="emb")
    out = model(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(out["logits"], model.classifier(out["emb"]))


def test_group_norm_and_standardised_weights_replace_batch_norm() -> None:
    model = model_with(norm="group_ws")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    flat = model.backbone.body.conv_stem.weight.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(flat.shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(flat.shape[0]), atol=5e-3, rtol=0)
    assert model(images(1))["logits"].shape == (1, K, SIZE // 4, SIZE // 4)  # batch of one: no batch statistics
    assert any(isinstance(m, nn.BatchNorm2d) for m in model_with().modules())
    with pytest.raises(ConfigError, match="model.norm must be one of batch, group_ws, not 'layer'"):
        model_with(norm="layer")
