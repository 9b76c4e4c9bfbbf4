"""Group normalisation + weight standardisation (Qiao et al. 2019), PMP's normalisation for from-scratch training
(``model.norm: group_ws``)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class StandardizedWeight(nn.Module):
    """``(W − mean) / std`` over each output filter (weight standardisation), as a parametrisation of a conv weight."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.flatten(1)
        mean, var = flat.mean(1), flat.var(1, unbiased=False)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        return (weight - mean.view(shape)) / (var.view(shape) + self.eps).sqrt()


def group_norm_weight_standardization(module: nn.Module, groups: int = 32) -> nn.Module:
    """In place: every BatchNorm2d becomes a GroupNorm of ``gcd(C, groups)`` groups (32 where the channels allow,
    fewer where they do not divide), and every Conv2d's weight is standardised per filter. Returns ``module``."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(channels, groups), channels, affine=True))
        else:
            group_norm_weight_standardization(child, groups)
            if isinstance(child, nn.Conv2d) and not parametrize.is_parametrized(child, "weight"):
                parametrize.register_parametrization(child, "weight", StandardizedWeight())
    return module
