"""Shared by the speed scripts: the median wall time of a method's full training step on one fixed batch."""

from __future__ import annotations

import statistics
import time

import torch

from weakseg.data.classes import ClassSet
from weakseg.methods import Method, build_method
from weakseg.models import ModelConfig, SegmentationModel, build_model


def build(
    method_name: str, method_args: dict, supervision: str, class_set: ClassSet
) -> tuple[SegmentationModel, Method]:
    """A randomly initialised lite0 + DeepLab-v3+ model with the method's heads, and the method."""
    model = build_model(ModelConfig(pretrained=False), class_set.num_classes)
    method = build_method(method_name, method_args, supervision, class_set)
    method.setup(model, ModelConfig(pretrained=False))
    return model.train(), method


def step_seconds(
    model: SegmentationModel, method: Method, optimizer: torch.optim.Optimizer, images: torch.Tensor, batch: dict
) -> float:
    """Seconds of one forward + loss + backward + optimiser step."""
    start = time.perf_counter()
    loss, _ = method.loss(method.forward(model, images), batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def median_step_seconds(
    model: SegmentationModel, method: Method, images: torch.Tensor, batch: dict, steps: int
) -> float:
    """Median seconds of forward + loss + backward + SGD over ``steps`` steps, after one warm-up step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = [step_seconds(model, method, optimizer, images, batch) for _ in range(steps + 1)]
    return statistics.median(times[1:])
