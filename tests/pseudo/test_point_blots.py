"""PMP's point blots: they grow inside uniform regions and never leave them; deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label

from weakseg.errors import ConfigError
from weakseg.pseudo.point_blots import UNLABELLED, PointBlotConfig, colour_kl, point_blots


def two_regions() -> tuple[np.ndarray, np.ndarray]:
    """A noisy red disc on a noisy blue background, and the disc's mask."""
    h, w = 48, 64
    ys, xs = np.mgrid[:h, :w]
    disc = (ys - 24) ** 2 + (xs - 30) ** 2 < 12**2
    rng = np.random.default_rng(0)
    image = np.where(disc[..., None], [200, 30, 30], [30, 40, 190]) + rng.integers(-4, 5, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), disc


def test_blots_stay_inside_the_connected_uniform_region_of_their_point() -> None:
    image, disc = two_regions()
    points = np.array([[30, 24, 3], [5, 5, 0], [60, 44, 0]], dtype=np.float32)
    blots = point_blots(image, points, PointBlotConfig(), seed=1)
    assert not (blots[disc] == 0).any()  # background labels never inside the disc
    assert not (blots[~disc] == 3).any()  # the object's blot never leaves the disc
    assert (blots == 3).sum() > 0.5 * disc.sum()  # and covers most of it
    object_blot = label(blots == 3, connectivity=1)
    assert object_blot.max() == 1  # one connected blot


def test_deterministic_for_a_seed_and_points_keep_their_labels() -> None:
    image, _ = two_regions()
    points = np.array([[30, 24, 3], [5, 5, 0]], dtype=np.float32)
    a = point_blots(image, points, PointBlotConfig(rounds=3), seed=7)
    assert np.array_equal(a, point_blots(image, points, PointBlotConfig(rounds=3), seed=7))
    assert a[24, 30] == 3 and a[5, 5] == 0
    assert (point_blots(image, points[:0], PointBlotConfig()) == UNLABELLED).all()


def test_colour_kl_is_zero_for_the_same_region_and_large_across_colours() -> None:
    image, disc = two_regions()
    assert colour_kl(image, disc, disc) == pytest.approx(0.0, abs=1e-9)
    assert colour_kl(image, disc, ~disc) > 5.0


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="point blots"):
        PointBlotConfig(confidence=0).check()
