"""CAM → labels: extraction with scales and flips, normalisation, background, band, box-CAM, baselines."""

from __future__ import annotations

import pytest
import torch

from weakseg.data.classes import IGNORE_INDEX
from weakseg.errors import ConfigError
from weakseg.pseudo.cam import (
    PseudoLabelConfig,
    background_score,
    banded_labels,
    box_region,
    box_scores,
    extract_cams,
    filled_boxes,
    filled_image,
    label_scores,
    max_normalise,
)


def test_extract_cams_undoes_the_flip_and_sums_scales() -> None:
    image = torch.rand(1, 3, 8, 12)
    ramp = lambda x: x[:, :1]  # noqa: E731  a "CAM" that is the first channel: flipping in and out cancels
    single = extract_cams(ramp, image)
    torch.testing.assert_close(extract_cams(ramp, image, flip=True), 2 * single)
    mixed = extract_cams(ramp, image, scales=(1.0, 0.5), flip=True)
    half = torch.nn.functional.interpolate(image[:, :1], (4, 6), mode="bilinear")
    expected = 2 * (single + torch.nn.functional.interpolate(half, (8, 12), mode="bilinear"))
    torch.testing.assert_close(mixed, expected)


def test_extract_cams_applies_relu() -> None:
    out = extract_cams(lambda x: -torch.ones_like(x[:, :2]), torch.zeros(1, 3, 4, 4))
    assert out.shape == (1, 2, 4, 4) and (out == 0).all()


def test_max_normalise() -> None:
    cams = torch.rand(2, 3, 5, 5) * 7
    r = max_normalise(cams)
    torch.testing.assert_close(r.flatten(-2).amax(-1), torch.ones(2, 3), atol=1e-4, rtol=0)


def test_label_scores_threshold_and_power() -> None:
    fg = torch.tensor([[[0.1, 0.5, 0.9]], [[0.2, 0.1, 0.95]]])  # 2 classes × 1×3
    labels = label_scores(fg, [3, 7], 0, "threshold", 0.3)
    assert labels.tolist() == [[0, 3, 7]]
    # power: bg = (1 − max)^t → (0.8, 0.5, 0.05)^1 with t = 1
    torch.testing.assert_close(background_score(fg, "power", 1.0), torch.tensor([[[0.8, 0.5, 0.05]]]))
    assert label_scores(fg, [3, 7], 0, "power", 1.0).tolist() == [[0, 0, 7]]  # ties go to background
    assert label_scores(fg, [3, 7], 0, "power", 4.0).tolist() == [[0, 3, 7]]
    assert label_scores(fg, [3, 7], None, "threshold", 0.3).tolist() == [[IGNORE_INDEX, 3, 7]]


def test_banded_labels_ignore_disagreement() -> None:
    fg = torch.tensor([[[0.02, 0.2, 0.5]]])
    assert banded_labels(fg, [4], 0, "threshold", (0.05, 0.3), 0.15).tolist() == [[0, IGNORE_INDEX, 4]]
    assert banded_labels(fg, [4], 0, "threshold", None, 0.15).tolist() == [[0, 4, 4]]


def test_box_scores_normalise_inside_each_box() -> None:
    cams = torch.zeros(4, 6, 8)
    cams[2] = torch.arange(48.0).view(6, 8)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 3.0, 2.0], [4.0, 3.0, 8.0, 6.0, 2.0], [2.0, 2.0, 6.0, 5.0, 3.0]])
    scores = box_scores(cams, boxes, [2, 3])
    assert scores.shape == (2, 6, 8)
    first = cams[2, :3, :4]
    torch.testing.assert_close(scores[0, :3, :4], first / (first.max() + 1e-5))
    second = cams[2, 3:, 4:]
    torch.testing.assert_close(scores[0, 3:, 4:], second / (second.max() + 1e-5))
    assert scores[0, :3, 4:].abs().sum() == 0 and scores[0, 3:, :4].abs().sum() == 0
    assert scores[1].sum() == 0  # class 3's CAM is zero everywhere
    region = box_region(boxes, 6, 8)
    assert region.sum() == 12 + 12 + 12 - 2 - 4  # the third box overlaps the first on 2 pixels, the second on 4


def test_box_overlap_goes_to_the_higher_score() -> None:
    fg = torch.zeros(2, 1, 2)
    fg[0, 0] = torch.tensor([0.9, 0.6])
    fg[1, 0] = torch.tensor([0.7, 0.8])
    assert label_scores(fg, [1, 2], 0, "threshold", 0.5).tolist() == [[1, 2]]


def test_filled_boxes_draw_small_over_large() -> None:
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0, 5.0], [0.0, 0.0, 4.0, 4.0, 2.0]])
    out = filled_boxes(boxes, 5, 5, 0)
    assert out[2, 2] == 5 and out[0, 0] == 2 and out[4, 4] == 0
    assert filled_image([3, 9], 2, 2, 0).unique().tolist() == [3]
    assert filled_image([], 2, 2, None).unique().tolist() == [IGNORE_INDEX]


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="pseudo.refine"):
        PseudoLabelConfig(refine="magic").check()
    with pytest.raises(ConfigError, match="pseudo.background"):
        PseudoLabelConfig(background="otsu").check()
    with pytest.raises(ConfigError, match="pseudo.scales"):
        PseudoLabelConfig(scales=(0.0,)).check()


def test_box_scores_fuse_the_prior_with_the_box_normalised_cam() -> None:
    cams = torch.zeros(3, 4, 6)
    cams[1] = torch.arange(24.0).view(4, 6)
    boxes = torch.tensor([[0.0, 0.0, 3.0, 4.0, 1.0]])
    priors = torch.zeros(1, 4, 6)
    priors[0, 1:3, 0:2] = 1.0
    normalised = cams[1, :, :3] / (cams[1, :, :3].max() + 1e-5)
    for w in (0.0, 0.25, 1.0):
        scores = box_scores(cams, boxes, [1], priors, w)
        torch.testing.assert_close(scores[0, :, :3], (1 - w) * priors[0, :, :3] + w * normalised)
        assert scores[0, :, 3:].abs().sum() == 0
    # Without a CAM model only the prior counts; the whole box when no prior is given.
    torch.testing.assert_close(box_scores(None, boxes, [1], priors, 0.0), priors)
    with pytest.raises(ValueError, match="need CAMs"):
        box_scores(None, boxes, [1], priors, 0.5)
