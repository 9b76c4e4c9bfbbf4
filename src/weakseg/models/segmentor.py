"""The segmentation model: backbone → decoder → classifier, plus named auxiliary heads that methods attach."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from weakseg.errors import ConfigError
from weakseg.models.backbones import Backbone, create_backbone
from weakseg.models.heads import DeepLabDecoder
from weakseg.models.norms import group_norm_weight_standardization

HEAD_INPUTS = ("decoder", "backbone")
NORMS = ("batch", "group_ws")


@dataclass
class ModelConfig:
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None  # a local file, "package", "hub", "none" or null (= try in that order)
    output_stride: int = 16
    head: str = "deeplabv3plus"  # or "deeplabv3"
    head_channels: int = 128
    # ASPP dilation rates at the output stride; null = DeepLab's (6, 12, 18) at stride 16 (×2 at stride 8). Keep the
    # largest rate well under half the training crop's feature size, or taps that saw only padding in training
    # land inside the image at test time: with (6, 12, 18) on 256² crops (16² features), whole-image val mIoU on
    # voc454 after 200 steps was 0.069, against 0.185 with (3, 6, 9).
    aspp_rates: tuple[int, ...] | None = None
    separable: bool = True
    dropout: float = 0.1
    channels_last: bool = True  # NHWC: 1.46× faster training steps on CPU (python -m benchmarks.speed step)
    # "batch": the backbone's batch norms; "group_ws": group norm + weight standardisation everywhere (Qiao et al.
    # 2019), PMP's normalisation for training from scratch on small batches.
    norm: str = "batch"


class SegmentationModel(nn.Module):
    """Dense classifier over a timm backbone.

    ``forward`` returns a dict: ``logits`` (B×K×h×w at the decoder's stride), ``decoder`` (decoder features),
    ``features`` (backbone feature maps) and one entry per auxiliary head registered with :meth:`add_head`
    (e.g. a CAM head on the backbone's last features, an embedding head on the decoder).
    """

    def __init__(
        self,
        backbone: Backbone,
        decoder: nn.Module,
        num_classes: int,
        dropout: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.classifier = nn.Sequential(
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), nn.Conv2d(decoder.out_channels, num_classes, 1)
        )
        self.heads = nn.ModuleDict()
        self._head_inputs: dict[str, str] = {}
        self._pretrained_parts: list[nn.Module] = []  # modules of heads that start from ImageNet weights
        self._classifier_input = "decoder"  # or a decoder-fed head (set_classifier)
        self._classifier_detached = False
        self.num_classes = num_classes
        # NHWC weights and inputs (converted in forward): 1.46× faster training, 2.3× faster inference on CPU.
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.backbone.info.mean, self.backbone.info.std

    def head_input_channels(self, source: str) -> int:
        if source == "decoder":
            return self.decoder.out_channels
        if source == "backbone":
            return self.backbone.info.channels[-1]
        raise ConfigError(f"head input must be one of {HEAD_INPUTS}, not {source!r}")

    def add_head(
        self, name: str, head: nn.Module, source: str = "decoder", *, pretrained: nn.Module | None = None
    ) -> None:
        """Attach an auxiliary head fed by the decoder features or the backbone's coarsest features; ``pretrained``
        is the part of it that starts from ImageNet weights (e.g. the backbone's own pre-pooling layers), which
        trains with the backbone (:meth:`pretrained_parameters`)."""
        self.head_input_channels(source)
        if name in self.heads or name in ("logits", "decoder", "features"):
            raise ValueError(f"a head named {name!r} already exists")
        self.heads[name] = head.to(memory_format=torch.channels_last) if self.channels_last else head
        self._head_inputs[name] = source
        if pretrained is not None:
            self._pretrained_parts.append(pretrained)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters that start from ImageNet weights: the backbone's and those of the heads' pretrained parts
        (the trainer gives them ``train.backbone_lr_mult``)."""
        modules = [self.backbone, *self._pretrained_parts]
        return list({id(p): p for module in modules for p in module.parameters()}.values())

    def set_classifier(self, classifier: nn.Module, source: str = "decoder", *, detach: bool = True) -> None:
        """Replace the classifier; ``source`` = a decoder-fed head makes it read that head's output, detached by default
        (SPML's softmax classifier on the embedding, trained without moving it)."""
        if source != "decoder" and self._head_inputs.get(source) != "decoder":
            raise ValueError(f"the classifier reads the decoder or a head fed by it, not {source!r}")
        self.classifier = classifier.to(memory_format=torch.channels_last) if self.channels_last else classifier
        self._classifier_input = source
        self._classifier_detached = detach and source != "decoder"

    def forward(self, x: torch.Tensor, decode: bool = True) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """With ``decode=False`` only the backbone and the heads fed by it run (a CAM learner's classifier)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {"features": features}
        if decode:
            out["decoder"] = self.decoder(features)
        for name, head in self.heads.items():
            if self._head_inputs[name] == "backbone":
                out[name] = head(features[-1])
            elif decode:
                out[name] = head(out["decoder"])
        if decode:
            source = out[self._classifier_input]
            out["logits"] = self.classifier(source.detach() if self._classifier_detached else source)
        return out


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    """Build the segmentation model a recipe describes."""
    if cfg.head not in ("deeplabv3plus", "deeplabv3"):
        raise ConfigError(f"model.head must be deeplabv3plus or deeplabv3, not {cfg.head!r}")
    if cfg.norm not in NORMS:
        raise ConfigError(f"model.norm must be one of {', '.join(NORMS)}, not {cfg.norm!r}")
    backbone = create_backbone(
        cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights, output_stride=cfg.output_stride
    )
    decoder = DeepLabDecoder(
        backbone.info.channels,
        channels=cfg.head_channels,
        output_stride=cfg.output_stride,
        rates=cfg.aspp_rates,
        plus=cfg.head == "deeplabv3plus",
        separable=cfg.separable,
    )
    model = SegmentationModel(backbone, decoder, num_classes, cfg.dropout, cfg.channels_last)
    if cfg.norm == "group_ws":
        group_norm_weight_standardization(model)
    return model
