"""CAM refiners: how a pseudo-label stage sharpens an image's foreground scores before labelling them (the recipe's
``pseudo.refine``). A refiner is a factory registered under its name with :func:`register_refiner`, in the module of
the tool it wraps (``pamr``: :mod:`weakseg.pseudo.pamr`, ``random_walk``: :mod:`weakseg.pseudo.random_walk`);
importing :mod:`weakseg.pseudo` registers them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor


class CamRefiner(Protocol):
    def __call__(self, scores: Tensor, image: Tensor, features: Callable[[], Tensor], region: Tensor | None) -> Tensor:
        """Refined ``C×H×W`` foreground scores of one image, from its scores in [0, 1], its ``1×3×H×W`` image (0–255),
        ``features()`` (the CAM model's last features, ``1×D×h×w``, computed on demand) and, for boxes, the ``C×H×W``
        0/1 region each class may occupy (None: anywhere)."""
        ...


REFINERS: dict[str, Callable[[], CamRefiner]] = {}
FEATURE_REFINERS: set[str] = set()  # the refiners that call ``features()``: they need a CAM model


def register_refiner(
    name: str, *, reads_features: bool = False
) -> Callable[[Callable[[], CamRefiner]], Callable[[], CamRefiner]]:
    """Register a refiner factory (called once per pseudo-label run) under ``name``."""

    def register(factory: Callable[[], CamRefiner]) -> Callable[[], CamRefiner]:
        REFINERS[name] = factory
        if reads_features:
            FEATURE_REFINERS.add(name)
        return factory

    return register


def build_refiner(name: str) -> CamRefiner:
    return REFINERS[name]()


def within(scores: Tensor, region: Tensor | None) -> Tensor:
    """``scores`` zeroed outside ``region`` (None: unchanged)."""
    return scores if region is None else scores * region


@register_refiner("none")
def unrefined() -> CamRefiner:
    """The scores as they are."""
    return lambda scores, image, features, region: scores
