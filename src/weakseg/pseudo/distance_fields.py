"""PMP's expanding distance fields (papers/pmp-single-stage-points.txt §3.2; METHODS.md §5).

* :func:`proximity_fields` — per class, ``1 − d/d_max`` with ``d`` the Euclidean distance to the class's nearest
  point: 1 at the points, falling to 0 at the farthest pixel (the paper's "normalised distance field", read as a
  confidence that is 1 at the seed points, §3.2.2).
* :func:`aggregate_fields` — object fields times the inverted background field, ``D_c ← (1 − D_bg) ⊙ D_c`` (§3.2.1).
* :func:`expand_fields` — ``clip(D + E, 0, 1)`` with the object and background expansion scores (eq. after (3)).
* :class:`ExpansionScore` — ``E ← E + clip(L^(e−1)/L^(e) − 1, ω, η)`` once per epoch, objects twice as fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def proximity_fields(
    points: torch.Tensor, height: int, width: int, classes: list[int], device: torch.device | None = None
) -> torch.Tensor:
    """``len(classes)×H×W`` fields ``1 − d_c/max(d_c)`` of the ``N×3`` ``[x, y, class]`` points (pixel centres).

    ``d_c`` is the distance of each pixel to the nearest point of class ``c``; a class without points gets a zero
    field, a field whose points cover the image is all ones.
    """
    device = device or points.device
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None]
    fields = torch.zeros(len(classes), height, width, device=device)
    for k, c in enumerate(classes):
        mine = points[points[:, 2].long() == c].to(device=device, dtype=torch.float32)
        if not len(mine):
            continue
        squared = (ys[None] - mine[:, 1, None, None]).square() + (xs[None] - mine[:, 0, None, None]).square()
        distance = squared.amin(0).sqrt()
        peak = distance.max()
        fields[k] = 1.0 - distance / peak if peak > 0 else torch.ones_like(distance)
    return fields


def aggregate_fields(objects: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``(1 − D_bg) ⊙ D_c`` for every object field (``C×H×W``) and the background field (``H×W``)."""
    return objects * (1.0 - background)[None]


def expand_fields(
    objects: torch.Tensor, background: torch.Tensor, object_score: float, background_score: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fields with the expansion scores added and clipped to ``[0, 1]``; absent classes (all-zero object
    fields) stay 0."""
    present = objects.flatten(1).amax(1) > 0
    expanded = (objects + object_score).clamp(0.0, 1.0) * present[:, None, None]
    return expanded, (background + background_score).clamp(0.0, 1.0)


@dataclass
class ExpansionScore:
    """The expansion confidence scores, updated once per epoch from the accumulated loss.

    ``γ = L^(e−1)/L^(e) − 1``; the background score grows by ``clip(γ, ω, η)`` and the object score by twice that
    (objects expand twice as fast); the first epoch has no previous loss and changes nothing.
    """

    lower: float = -0.025  # ω
    upper: float = 0.025  # η
    object_rate: float = 2.0
    background: float = 0.0
    objects: float = 0.0
    previous_loss: float | None = None

    def update(self, epoch_loss: float) -> float:
        """Fold in one epoch's accumulated loss; returns the step ``clip(γ, ω, η)`` (0 on the first epoch)."""
        step = 0.0
        if self.previous_loss is not None and epoch_loss > 0:
            step = min(max(self.previous_loss / epoch_loss - 1.0, self.lower), self.upper)
        self.background += step
        self.objects += self.object_rate * step
        self.previous_loss = epoch_loss
        return step

    def state_dict(self) -> dict:
        return {"background": self.background, "objects": self.objects, "previous_loss": self.previous_loss}

    def load_state_dict(self, state: dict) -> None:
        self.background, self.objects = state["background"], state["objects"]
        self.previous_loss = state["previous_loss"]
