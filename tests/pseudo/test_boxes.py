"""Box priors: the whole box, and GrabCut's object inside it on images where the object is known."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.pseudo.boxes import box_priors


def disc_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy red disc on a noisy green-grey background, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:80, :100]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 20**2
    image = np.where(disc[..., None], [200, 40, 40], [90, 120, 90]) + rng.normal(0, 12, (80, 100, 3))
    return image.clip(0, 255).astype(np.uint8), disc


def test_box_prior_fills_each_box() -> None:
    image, _ = disc_image()
    boxes = np.array([[10.0, 5.0, 30.0, 25.0, 1], [0.0, 0.0, 100.0, 80.0, 2]])
    priors = box_priors(image, boxes, "box")
    assert priors.shape == (2, 80, 100) and priors.dtype == np.float32
    assert priors[0].sum() == 20 * 20 and priors[0, 5:25, 10:30].all()
    assert priors[1].all()


def test_grabcut_finds_the_object_inside_its_box() -> None:
    image, disc = disc_image()
    box = np.array([[28.0, 18.0, 72.0, 62.0, 3]])  # the disc's box, 2 pixels of slack
    prior = box_priors(image, box, "grabcut")[0] > 0
    iou = (prior & disc).sum() / (prior | disc).sum()
    assert iou > 0.9
    assert not prior[:18].any() and not prior[:, :28].any()  # nothing outside the box
    box_iou = disc.sum() / box_priors(image, box, "box")[0].sum()
    assert iou > box_iou + 0.1


def test_grabcut_keeps_the_box_where_it_cannot_model_the_background() -> None:
    image, _ = disc_image()
    flat = np.full_like(image, 128)
    whole = np.array([[0.0, 0.0, 100.0, 80.0, 1]])  # no pixel outside the box
    thin = np.array([[10.0, 10.0, 12.0, 60.0, 1]])  # 2 pixels wide
    assert box_priors(image, whole, "grabcut")[0].all()
    assert box_priors(image, thin, "grabcut")[0].sum() == 2 * 50
    flat_box = box_priors(flat, np.array([[20.0, 20.0, 60.0, 60.0, 1]]), "grabcut")[0]
    assert flat_box.sum() >= 0.05 * 40 * 40  # never less than min_fill of the box: the whole box instead


def test_unknown_prior_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown box prior"):
        box_priors(np.zeros((4, 4, 3), np.uint8), np.zeros((0, 5)), "watershed")
