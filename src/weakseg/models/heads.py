"""Decoder and auxiliary heads: DeepLab-v3(+) ASPP decoder, CAM head, projection head, embedding classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    """k×k convolution (optionally depthwise-separable) + BN + ReLU."""
    pad = dilation * (k // 2)
    if separable and k > 1:
        layers = [
            nn.Conv2d(cin, cin, k, padding=pad, dilation=dilation, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
        ]
    else:
        layers = [nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab-v3, Chen et al. 2017): 1×1, three atrous 3×3, image pooling."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...], separable: bool = True, dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r, separable) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            conv_bn_relu(cout * (len(rates) + 2), cout, 1), nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabDecoder(nn.Module):
    """DeepLab-v3 (ASPP on the coarsest features) or v3+ (ASPP + a stride-4 skip) decoder.

    Returns decoder features at the stride of the finest feature map used (4 for v3+, the output stride for v3).
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        channels: int = 128,
        output_stride: int = 16,
        rates: tuple[int, ...] | None = None,
        plus: bool = True,
        separable: bool = True,
        skip_channels: int = 48,
    ) -> None:
        super().__init__()
        if rates is None:
            rates = tuple(r * (16 // output_stride) for r in (6, 12, 18)) if output_stride <= 16 else (3, 6, 9)
        self.aspp = ASPP(in_channels[-1], channels, rates, separable)
        self.plus = plus
        if plus:
            self.skip = conv_bn_relu(in_channels[0], skip_channels, 1)
            self.fuse = nn.Sequential(
                conv_bn_relu(channels + skip_channels, channels, 3, separable=separable),
                conv_bn_relu(channels, channels, 3, separable=separable),
            )
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.aspp(features[-1])
        if not self.plus:
            return x
        skip = self.skip(features[0])
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], dim=1))


class CAMHead(nn.Module):
    """Class activation maps: a 1×1 convolution to one score map per class (Zhou et al. 2016).

    ``neck`` (``cin`` → ``neck_channels``), e.g. the backbone's own pre-pooling layers from
    :func:`~weakseg.models.backbones.create_pre_logits`, runs first.
    """

    def __init__(self, cin: int, num_classes: int, neck: nn.Module | None = None, neck_channels: int = 0) -> None:
        super().__init__()
        self.neck = neck if neck is not None else nn.Identity()
        self.classifier = nn.Conv2d(neck_channels if neck is not None else cin, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.neck(x))


class ProjectionHead(nn.Module):
    """Pixel embeddings: 1×1 conv (optionally conv–BN–ReLU–conv) then L2 normalisation over channels."""

    def __init__(self, cin: int, dim: int = 128, hidden: int | None = None, relu: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden:
            layers += [conv_bn_relu(cin, hidden, 1)]
            cin = hidden
        layers.append(nn.Conv2d(cin, dim, 1))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class EmbeddingClassifier(nn.Module):
    """SPML's softmax classifier on the pixel embedding: 3×3 conv (to 2·dim) – BN – ReLU – dropout – 1×1 conv."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.65) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(2 * dim, num_classes, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)
