"""Test-time inference: single scale, flip, sliding window and multi-scale against direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.engine.inference import predict_labels, predict_probs

K = 4


def conv_model(kernel: int, seed: int = 0, symmetric: bool = False) -> nn.Conv2d:
    """A fixed 3→K conv with 'same' padding; ``symmetric`` makes it equivariant to horizontal flips."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, K, kernel, padding=kernel // 2)
    if symmetric:
        with torch.no_grad():
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return conv.eval()


def images(b: int, h: int, w: int, seed: int = 1) -> Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_single_scale_is_softmax_of_model() -> None:
    model, x = conv_model(3), images(2, 13, 17)
    probs = predict_probs(model, x)
    assert torch.allclose(probs, model(x).softmax(1), atol=1e-6)
    assert not probs.requires_grad
    assert torch.equal(predict_labels(model, x), probs.argmax(1))
    assert predict_labels(model, x).dtype == torch.int64


def test_low_resolution_logits_are_upsampled() -> None:
    conv = conv_model(1)

    def model(x: Tensor) -> Tensor:
        return conv(F.avg_pool2d(x, 4))

    x = images(1, 32, 24)
    expected = F.interpolate(model(x).softmax(1), size=(32, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(predict_probs(model, x), expected, atol=1e-6)


def test_flip_with_flip_equivariant_model_changes_nothing() -> None:
    model, x = conv_model(3, symmetric=True), images(2, 11, 14)
    assert torch.allclose(predict_probs(model, x, flip=True), predict_probs(model, x), atol=1e-5)
    other = conv_model(3)
    assert not torch.allclose(predict_probs(other, x, flip=True), predict_probs(other, x), atol=1e-3)


@pytest.mark.parametrize(
    ("size", "window", "overlap"),
    [
        ((37, 50), 16, 1 / 3),  # neither side divisible by the window or the stride
        ((37, 50), 16, 0.0),
        ((33, 20), 16, 0.5),
        ((10, 40), 16, 1 / 3),  # one side shorter than the window: padded
        ((10, 12), 16, 1 / 3),  # whole image smaller than the window
    ],
)
def test_sliding_window_matches_full_image_for_pointwise_model(
    size: tuple[int, int], window: int, overlap: float
) -> None:
    model, x = conv_model(1), images(2, *size)
    full = predict_probs(model, x)
    tiled = predict_probs(model, x, window=window, overlap=overlap)
    assert tiled.shape == (2, K, *size)
    assert torch.allclose(tiled, full, atol=1e-5)


def test_sliding_window_feeds_window_sized_tiles() -> None:
    conv, seen = conv_model(1), []

    def model(x: Tensor) -> Tensor:
        seen.append(tuple(x.shape[-2:]))
        return conv(x)

    predict_probs(model, images(1, 10, 40), window=16, overlap=0.5)  # height padded to 16
    assert seen == [(16, 16)] * 4  # left edges 0, 8, 16 and 24 (flush with the right border)


def test_multi_scale_shape_and_normalisation() -> None:
    model, x = conv_model(3), images(2, 21, 30)
    probs = predict_probs(model, x, scales=(0.5, 0.75, 1.0, 1.5), flip=True, window=24, num_classes=K)
    assert probs.shape == (2, K, 21, 30)
    assert torch.allclose(probs.sum(1), torch.ones(2, 21, 30), atol=1e-5)
    assert (probs >= 0).all()


def test_multi_scale_of_constant_image_with_pointwise_model_equals_single_scale() -> None:
    model = conv_model(1)
    x = torch.randn(2, 3, 1, 1).expand(2, 3, 15, 19)
    multi = predict_probs(model, x, scales=(0.5, 1.0, 1.75), flip=True)
    assert torch.allclose(multi, predict_probs(model, x), atol=1e-5)


def test_invalid_arguments_raise() -> None:
    model, x = conv_model(1), images(1, 8, 8)
    with pytest.raises(ValueError, match="classes"):
        predict_probs(model, x, num_classes=K + 1)
    with pytest.raises(ValueError, match="scales"):
        predict_probs(model, x, scales=())
    with pytest.raises(ValueError, match="overlap"):
        predict_probs(model, x, window=4, overlap=1.0)
    with pytest.raises(ValueError, match="batch"):
        predict_probs(model, x[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_images_device() -> None:
    model, x = conv_model(3).cuda(), images(2, 37, 50).cuda()
    probs = predict_probs(model, x, scales=(0.5, 1.0), flip=True, window=16)
    assert probs.device == x.device
    assert torch.allclose(probs.sum(1), torch.ones(2, 37, 50, device=x.device), atol=1e-5)
