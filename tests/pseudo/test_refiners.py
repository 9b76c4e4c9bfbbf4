"""CAM refiners as a registry: the built-in ones wrap their tools exactly, and a new one is a function and its
registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.errors import ConfigError
from weakseg.pseudo import PAMR, RandomWalk
from weakseg.pseudo.cam import PseudoLabelConfig, max_normalise
from weakseg.pseudo.refiners import REFINERS, CamRefiner, build_refiner, register_refiner


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 16, 20, generator=generator)
    image = torch.randint(0, 256, (1, 3, 16, 20), generator=generator).float()
    features = torch.randn(1, 8, 4, 5, generator=generator)
    region = torch.zeros(2, 16, 20)
    region[:, 2:10, 3:15] = 1
    return scores, image, features, region


def test_the_built_in_refiners_are_registered() -> None:
    assert {"none", "pamr", "random_walk"} <= set(REFINERS)
    with pytest.raises(ConfigError, match="pseudo.refine must be one of none, pamr, random_walk"):
        PseudoLabelConfig(refine="magic").check()


def test_pamr_refines_the_scores_within_the_region(inputs: tuple) -> None:
    scores, image, features, region = inputs
    refined = build_refiner("pamr")(scores, image, lambda: features, region)
    assert torch.equal(refined, PAMR()(scores[None], image)[0] * region)
    assert torch.equal(build_refiner("none")(scores, image, lambda: features, region), scores)


def test_the_random_walk_refiner_walks_on_the_features_then_normalises(inputs: tuple) -> None:
    scores, image, features, region = inputs
    refined = build_refiner("random_walk")(scores, image, lambda: features, region)
    walked = RandomWalk()(F.adaptive_avg_pool2d(scores[None], (4, 5)), features)
    expected = max_normalise(F.interpolate(walked, (16, 20), mode="bilinear", align_corners=False)[0] * region)
    assert torch.equal(refined, expected)
    read = []
    build_refiner("pamr")(scores, image, lambda: read.append(1) or features, None)
    assert read == []  # the features are computed only for a refiner that reads them


def test_a_new_refiner_is_a_registered_factory(inputs: tuple) -> None:
    scores, image, features, _ = inputs

    @register_refiner("squared")
    def squared() -> CamRefiner:
        return lambda scores, image, features, region: scores**2

    try:
        assert PseudoLabelConfig(refine="squared").check().refine == "squared"
        assert torch.equal(build_refiner("squared")(scores, image, lambda: features, None), scores**2)
    finally:
        del REFINERS["squared"]
