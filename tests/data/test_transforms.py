"""JointTransform keeps image, mask, scribble, points and boxes aligned under every random augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from weakseg.data.classes import IGNORE_INDEX
from weakseg.data.sample import Sample
from weakseg.data.transforms import AugmentConfig, JointTransform
from weakseg.pseudo import oversegment  # noqa: F401 (registers the map "regions")

H, W = 40, 64
PAD = (124, 116, 104)
# class id -> (row0, row1, col0, col1), half-open, disjoint rectangles on background 0
RECTS = {1: (2, 12, 3, 17), 2: (5, 30, 24, 33), 3: (20, 37, 40, 61), 4: (28, 38, 2, 20), 5: (14, 22, 8, 12)}


def make_sample() -> Sample:
    """Image channels 0/1 encode the source column/row of every pixel, channel 2 its region; labels follow."""
    mask = np.zeros((H, W), dtype=np.uint8)
    for cls, (r0, r1, c0, c1) in RECTS.items():
        mask[r0:r1, c0:c1] = cls
    rows, cols = np.mgrid[:H, :W]
    image = np.stack([cols, rows, mask.astype(np.int64) * 40 + 20], axis=-1).astype(np.uint8)
    scribble = np.full((H, W), IGNORE_INDEX, dtype=np.uint8)
    for cls, (r0, r1, c0, c1) in RECTS.items():
        scribble[(r0 + r1) // 2, c0 + 1 : c1 - 1] = cls
        scribble[r0 + 1 : r1 - 1, (c0 + c1) // 2] = cls
    scribble[H - 2] = np.where(mask[H - 2] == 0, 0, IGNORE_INDEX)
    centres = [[(c0 + c1 - 1) // 2, (r0 + r1 - 1) // 2, cls] for cls, (r0, r1, c0, c1) in RECTS.items()]
    corners = [[0, 0, 0], [W - 1, H - 1, 0], [W - 1, 0, 0], [36, 2, 0]]
    points = np.array(centres + corners, dtype=np.float32)
    boxes = np.array([[c0, r0, c1, r1, cls] for cls, (r0, r1, c0, c1) in RECTS.items()], dtype=np.float32)
    tags = np.array(sorted(RECTS), dtype=np.int64)
    maps = {"mask": mask, "scribble": scribble}
    return Sample("grid", image, maps, tags=tags, boxes=boxes, points=points, meta={"source": "test"})


def labels(sample: Sample, name: str) -> np.ndarray | None:
    """The image, a map of ``sample.maps`` or a table field of ``sample``, by name."""
    return sample.maps.get(name) if name in ("mask", "scribble") else getattr(sample, name)


def plain(**changes) -> AugmentConfig:
    """A configuration that does nothing except what ``changes`` turn on."""
    settings = {"crop_size": 0, "scale_range": (1.0, 1.0), "hflip": False, "color_jitter": 0.0, **changes}
    return AugmentConfig(**settings)


def check_common(out: Sample, src: Sample) -> None:
    """Invariants that hold for every configuration without colour jitter."""
    h, w = out.size
    assert out.maps["mask"].shape == out.maps["scribble"].shape == (h, w)
    assert out.image.dtype == out.maps["mask"].dtype == out.maps["scribble"].dtype == np.uint8
    # nearest neighbour: no new label values; scribble agrees with the mask wherever it is labelled
    assert set(np.unique(out.maps["mask"])) <= {*np.unique(src.maps["mask"]).tolist(), IGNORE_INDEX}
    assert set(np.unique(out.maps["scribble"])) <= set(np.unique(src.maps["scribble"]).tolist())
    labelled = out.maps["scribble"] != IGNORE_INDEX
    np.testing.assert_array_equal(out.maps["scribble"][labelled], out.maps["mask"][labelled])
    # the source mask has no ignore pixels, so 255 in the output is padding: pad colour in the image
    pad = out.maps["mask"] == IGNORE_INDEX
    assert np.all(out.maps["scribble"][pad] == IGNORE_INDEX)
    assert np.all(out.image[pad] == PAD)
    # meta["valid"] is exactly the rectangle of real (non-padding) pixels
    x0, y0, x1, y1 = out.meta["valid"]
    real = np.zeros((h, w), dtype=bool)
    real[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(real, ~pad)
    # inside uniform label areas the image's encoded source coordinates and region colour match the mask
    # (the crop border counts as non-uniform: bilinear sampling there also reads pixels outside the crop)
    lo = ndimage.minimum_filter(out.maps["mask"], 5, mode="constant", cval=IGNORE_INDEX)
    inner = (lo == ndimage.maximum_filter(out.maps["mask"], 5, mode="constant", cval=IGNORE_INDEX)) & ~pad
    src_cols, src_rows = out.image[..., 0][inner], out.image[..., 1][inner]
    np.testing.assert_array_equal(src.maps["mask"][src_rows, src_cols], out.maps["mask"][inner])
    assert np.abs(out.image[..., 2][inner].astype(int) - (out.maps["mask"][inner].astype(int) * 40 + 20)).max() <= 1
    # geometry stays inside the output image; tags and meta untouched
    assert out.points.dtype == out.boxes.dtype == np.float32
    assert np.all((out.points[:, 0] >= 0) & (out.points[:, 0] <= w - 1))
    assert np.all((out.points[:, 1] >= 0) & (out.points[:, 1] <= h - 1))
    b = out.boxes
    assert np.all((b[:, 0] >= 0) & (b[:, 2] <= w) & (b[:, 1] >= 0) & (b[:, 3] <= h))
    assert np.all((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    np.testing.assert_array_equal(out.tags, src.tags)
    assert {k: v for k, v in out.meta.items() if k != "valid"} == src.meta and out.meta is not src.meta


def check_boxes(out: Sample, tol: float) -> None:
    """Every surviving box bounds its rectangle in the output mask; every visible rectangle keeps its box."""
    kept = {int(c) for c in out.boxes[:, 4]}
    for x0, y0, x1, y1, cls in out.boxes:
        ys, xs = np.nonzero(out.maps["mask"] == cls)
        if xs.size == 0:  # a sliver thinner than one pixel may survive the crop without any pixel centre
            assert min(x1 - x0, y1 - y0) <= tol
            continue
        tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose([x0, y0, x1, y1], tight, atol=tol)
    for cls in RECTS:
        ys, xs = np.nonzero(out.maps["mask"] == cls)
        if cls not in kept:
            assert xs.size == 0 or min(np.ptp(xs), np.ptp(ys)) < tol


@pytest.mark.parametrize("seed", range(60))
def test_alignment_is_exact_without_scaling(seed: int) -> None:
    src = make_sample()
    cfg = plain(crop_size=32, hflip=True)
    out = JointTransform(cfg)(src, np.random.default_rng(seed))
    assert out.size == (32, 32)
    check_common(out, src)
    # every output pixel carries the labels of the source pixel its image encodes
    cols, rows = out.image[..., 0].astype(int), out.image[..., 1].astype(int)
    np.testing.assert_array_equal(out.maps["mask"], src.maps["mask"][rows, cols])
    np.testing.assert_array_equal(out.maps["scribble"], src.maps["scribble"][rows, cols])
    # points land exactly on their marker pixel; a point survives iff its marker is inside the crop
    px, py = out.points[:, 0], out.points[:, 1]
    np.testing.assert_array_equal(px, np.round(px))
    np.testing.assert_array_equal(py, np.round(py))
    px, py = px.astype(int), py.astype(int)
    marks = zip(cols[py, px], rows[py, px], out.points[:, 2], strict=True)
    landed = {(int(c), int(r), int(k)) for c, r, k in marks}
    visible = {(int(x), int(y), int(k)) for x, y, k in src.points if np.any((cols == x) & (rows == y))}
    assert landed == visible
    np.testing.assert_array_equal(out.maps["mask"][py, px], out.points[:, 2])
    check_boxes(out, tol=0.0)


@pytest.mark.parametrize("seed", range(100))
def test_alignment_with_scaling(seed: int) -> None:
    src = make_sample()
    cfg = plain(crop_size=48, scale_range=(0.5, 2.0), hflip=True)
    out = JointTransform(cfg)(src, np.random.default_rng(seed))
    assert out.size == (48, 48)
    check_common(out, src)
    # each surviving point lies within one pixel of a pixel of its own class
    padded = np.pad(out.maps["mask"], 1, constant_values=IGNORE_INDEX)
    for x, y, cls in out.points:
        r, c = round(float(y)) + 1, round(float(x)) + 1
        assert np.any(padded[r - 1 : r + 2, c - 1 : c + 2] == cls)
    check_boxes(out, tol=1.0)


def test_scaling_changes_size_without_crop() -> None:
    src = make_sample()
    out = JointTransform(plain(scale_range=(2.0, 2.0)))(src, np.random.default_rng(0))
    assert out.size == (2 * H, 2 * W)
    check_common(out, src)
    np.testing.assert_allclose(out.points[:, :2], (src.points[:, :2] + 0.5) * 2 - 0.5)
    np.testing.assert_allclose(out.boxes[:, :4], src.boxes[:, :4] * 2)
    np.testing.assert_array_equal(out.points[:, 2], src.points[:, 2])


def test_downscaled_points_stay_inside_image() -> None:
    src = make_sample()
    out = JointTransform(plain(scale_range=(0.25, 0.25)))(src, np.random.default_rng(0))
    assert out.size == (H // 4, W // 4)
    assert len(out.points) == len(src.points)
    assert out.points[:, :2].min() >= 0
    assert np.all(out.points[:, :2].max(axis=0) <= [W // 4 - 1, H // 4 - 1])


def test_padding_bottom_right_with_ignore() -> None:
    src = make_sample()
    out = JointTransform(plain(crop_size=80))(src, np.random.default_rng(0))
    assert out.size == (80, 80)
    np.testing.assert_array_equal(out.image[:H, :W], src.image)
    np.testing.assert_array_equal(out.maps["mask"][:H, :W], src.maps["mask"])
    np.testing.assert_array_equal(out.maps["scribble"][:H, :W], src.maps["scribble"])
    for label in (out.maps["mask"], out.maps["scribble"]):
        assert np.all(label[H:] == IGNORE_INDEX) and np.all(label[:, W:] == IGNORE_INDEX)
    assert np.all(out.image[H:] == PAD) and np.all(out.image[:, W:] == PAD)
    np.testing.assert_array_equal(out.points, src.points)
    np.testing.assert_array_equal(out.boxes, src.boxes)


def test_flip_is_pure_mirror() -> None:
    src = make_sample()
    transform = JointTransform(plain(hflip=True))
    flipped = 0
    for seed in range(20):
        out = transform(src, np.random.default_rng(seed))
        if np.array_equal(out.image, src.image):
            np.testing.assert_array_equal(out.maps["mask"], src.maps["mask"])
            np.testing.assert_array_equal(out.points, src.points)
            np.testing.assert_array_equal(out.boxes, src.boxes)
            continue
        flipped += 1
        np.testing.assert_array_equal(out.image, src.image[:, ::-1])
        np.testing.assert_array_equal(out.maps["mask"], src.maps["mask"][:, ::-1])
        np.testing.assert_array_equal(out.maps["scribble"], src.maps["scribble"][:, ::-1])
        np.testing.assert_array_equal(out.points[:, 0], W - 1 - src.points[:, 0])
        np.testing.assert_array_equal(out.points[:, 1:], src.points[:, 1:])
        np.testing.assert_array_equal(out.boxes[:, [0, 2]], W - src.boxes[:, [2, 0]])
        np.testing.assert_array_equal(out.boxes[:, [1, 3, 4]], src.boxes[:, [1, 3, 4]])
    assert 0 < flipped < 20


def test_color_jitter_touches_only_the_image() -> None:
    src = make_sample()
    transform = JointTransform(plain(color_jitter=0.4))
    changed = 0
    for seed in range(10):
        out = transform(src, np.random.default_rng(seed))
        assert out.image.shape == src.image.shape and out.image.dtype == np.uint8
        changed += not np.array_equal(out.image, src.image)
        for name in ("mask", "scribble", "points", "boxes", "tags"):
            np.testing.assert_array_equal(labels(out, name), labels(src, name))
    assert changed == 10


def test_deterministic_for_seed() -> None:
    src = make_sample()
    transform = JointTransform(AugmentConfig(crop_size=32))
    a, b = (transform(src, np.random.default_rng(7)) for _ in range(2))
    for name in ("image", "mask", "scribble", "points", "boxes"):
        np.testing.assert_array_equal(labels(a, name), labels(b, name))
    others = [transform(src, np.random.default_rng(s)).image for s in range(8, 12)]
    assert not all(np.array_equal(a.image, o) for o in others)


@pytest.mark.parametrize("cfg", [AugmentConfig(crop_size=32), plain()])
def test_input_sample_is_not_modified(cfg: AugmentConfig) -> None:
    src = make_sample()
    before = make_sample()
    out = JointTransform(cfg)(src, np.random.default_rng(3))
    for name in ("image", "mask", "scribble", "points", "boxes", "tags"):
        np.testing.assert_array_equal(labels(src, name), labels(before, name))
        assert not np.shares_memory(labels(out, name), labels(src, name))
    assert src.meta == before.meta


def test_missing_labels_stay_missing() -> None:
    src = Sample("img", make_sample().image, tags=np.array([1, 2]))
    out = JointTransform(AugmentConfig(crop_size=32))(src, np.random.default_rng(0))
    assert out.size == (32, 32)
    assert out.maps.get("mask") is out.maps.get("scribble") is out.points is out.boxes is None
    np.testing.assert_array_equal(out.tags, [1, 2])


@pytest.mark.parametrize("seed", range(12))
def test_regions_follow_the_mask_with_nearest_sampling(seed: int) -> None:
    """Region ids above 255 (int32) map one-to-one onto the mask's classes; padding gets −1."""
    src = make_sample()
    src = src.with_maps(regions=(src.maps["mask"].astype(np.int32) * 1000 + 7))
    cfg = AugmentConfig(crop_size=48, scale_range=(0.6, 1.6), hflip=True, color_jitter=0.2)
    out = JointTransform(cfg)(src, np.random.default_rng(seed))
    assert out.maps["regions"].dtype == np.int32 and out.maps["regions"].shape == out.maps["mask"].shape
    pad = out.maps["mask"] == IGNORE_INDEX
    assert np.all(out.maps["regions"][pad] == -1)
    np.testing.assert_array_equal(out.maps["regions"][~pad], out.maps["mask"][~pad].astype(np.int32) * 1000 + 7)
