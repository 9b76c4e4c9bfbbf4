"""Class activation maps → pseudo-labels: multi-scale + flip CAMs, tag and box labelling, filled-box baseline.

The labelling shared by tags and boxes: per-class foreground scores in [0, 1] (the max-normalised CAM for tags,
HFPL eq. 4; the CAM normalised inside each box for boxes) are stacked under a background score, and every pixel takes
the arg-max. The background score is a constant ``t`` (``threshold``, IRN) or ``(1 − max_c r_c)^t`` (``power``,
AffinityNet/SPML). Pseudo-labels for training label each pixel twice, with the two values of ``ignore_band``, and
ignore the pixels where the two labellings disagree (AffinityNet's low/high-α confident regions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.data.classes import IGNORE_INDEX
from weakseg.data.sample import box_pixel_slices
from weakseg.errors import ConfigError
from weakseg.pseudo.boxes import BOX_PRIORS
from weakseg.pseudo.refiners import REFINERS

BACKGROUNDS = ("threshold", "power")
BOX_RESTS = ("background", "ignore")


@dataclass
class PseudoLabelConfig:
    """How a CAM learner's maps become training labels (the ``pseudo`` section of a recipe)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    flip: bool = True
    background: str = "threshold"  # threshold: bg score = t (IRN); power: bg = (1 − max fg)^t (AffinityNet, SPML)
    background_param: float = 0.15  # t of the dense labelling (the "seed")
    ignore_band: tuple[float, float] | None = (0.05, 0.30)  # label with both t; pixels where they disagree: ignore
    box_threshold: float = 0.5  # box-CAM: normalised CAM ≥ threshold inside a box → its class (SPML)
    box_ignore_band: tuple[float, float] | None = None
    # Boxes: each box's score is (1 − w)·prior + w·CAM normalised in the box, the prior from the image alone
    # (weakseg.pseudo.boxes: "box" = the whole box, "grabcut"); w = 1 is SPML's box-CAM, w = 0 needs no model.
    box_prior: str = "box"
    box_cam_weight: float = 1.0
    # The rest of a box (its pixels labelled background) in the training labels: "background", or "ignore" (the
    # loss skips them: only the box's object pixels and the pixels outside every box are trusted).
    box_rest: str = "background"
    refine: str = "pamr"  # a registered refiner (weakseg.pseudo.refiners): none | pamr | random_walk
    crf: bool = False  # relabel the confident pixels with a dense CRF (weakseg.pseudo.DenseCRF)

    def check(self) -> PseudoLabelConfig:
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"pseudo.scales must be positive numbers, got {list(self.scales)}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"pseudo.background must be one of {', '.join(BACKGROUNDS)}, not {self.background!r}")
        if self.refine not in REFINERS:
            raise ConfigError(f"pseudo.refine must be one of {', '.join(REFINERS)}, not {self.refine!r}")
        if self.box_prior not in BOX_PRIORS:
            raise ConfigError(f"pseudo.box_prior must be one of {', '.join(BOX_PRIORS)}, not {self.box_prior!r}")
        if self.box_rest not in BOX_RESTS:
            raise ConfigError(f"pseudo.box_rest must be one of {', '.join(BOX_RESTS)}, not {self.box_rest!r}")
        if not 0.0 <= self.box_cam_weight <= 1.0:
            raise ConfigError(f"pseudo.box_cam_weight must lie in [0, 1], got {self.box_cam_weight}")
        for name in ("box_threshold",):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"pseudo.{name} must lie in (0, 1), got {getattr(self, name)}")
        return self


@torch.no_grad()
def extract_cams(
    cam_fn: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> Tensor:
    """B×C×H×W CAMs of a normalised B×3×H×W batch: ReLU(s_c) at each scale (and mirrored), upsampled, summed.

    ``cam_fn`` maps a batch to class score maps s_c at any stride (IRN's multi-scale + flip inference).
    """
    height, width = images.shape[-2:]
    total: Tensor | None = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(images, size, mode="bilinear")
        for flipped in (False, True) if flip else (False,):
            cams = F.relu(cam_fn(scaled.flip(-1) if flipped else scaled).float())
            cams = F.interpolate(cams, (height, width), mode="bilinear", align_corners=False)
            cams = cams.flip(-1) if flipped else cams
            total = cams if total is None else total.add_(cams)
    return total


def max_normalise(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """Each map divided by its maximum over the image (HFPL eq. 4 on ReLU'd CAMs)."""
    return cams / (cams.flatten(-2).amax(-1)[..., None, None] + eps)


def box_scores(
    cams: Tensor | None, boxes: Tensor, classes: Sequence[int], priors: Tensor | None = None, cam_weight: float = 1.0
) -> Tensor:
    """Per class of ``classes``, the score of each box of that class: ``(1 − w)·prior + w·CAM`` with the CAM
    normalised by its maximum inside the box (box-CAM, SPML, at ``w = 1``) and ``priors`` the boxes' N×H×W object
    maps (the whole box when None); zero outside the boxes; where boxes of one class overlap, the higher score.
    ``cams`` is K×H×W over all class ids (None only with ``w = 0``), ``boxes`` N×5 ``[x0, y0, x1, y1, class]`` in
    pixel coordinates of the maps."""
    if cams is None and cam_weight > 0:
        raise ValueError("box scores with a CAM weight need CAMs")
    height, width = priors.shape[-2:] if cams is None else cams.shape[-2:]
    out = torch.zeros(len(classes), height, width, device=boxes.device if cams is None else cams.device)
    row = {c: i for i, c in enumerate(classes)}
    for n, box in enumerate(boxes):
        c = int(box[4])
        rows, cols = box_pixel_slices(box.cpu().numpy(), height, width)
        if priors is None:
            score = out.new_ones(rows.stop - rows.start, cols.stop - cols.start)
        else:
            score = priors[n, rows, cols]
        if cam_weight > 0:
            inside = cams[c, rows, cols].float()
            score = (1.0 - cam_weight) * score + cam_weight * inside / (inside.max() + 1e-5)
        out[row[c], rows, cols] = torch.maximum(out[row[c], rows, cols], score)
    return out


def box_region(boxes: Tensor, height: int, width: int) -> Tensor:
    """H×W bool: pixels inside any box."""
    inside = torch.zeros(height, width, dtype=torch.bool)
    for box in boxes:
        rows, cols = box_pixel_slices(box.cpu().numpy(), height, width)
        inside[rows, cols] = True
    return inside


# Background thresholds at which seeds are also scored: SEAM and PPC report seed mIoU at the best of a range of
# thresholds (PPC §4.2; SEAM's evaluation steps by 0.01 from 0), not at the one the pseudo-labels use. At 0 every
# pixel with a positive CAM of a tagged class is foreground.
SEED_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(96))


def background_score(fg: Tensor, mode: str, t: float) -> Tensor:
    """1×H×W background score beside K×H×W foreground scores: ``t`` or ``(1 − max fg)^t``."""
    if mode == "threshold":
        return fg.new_full((1, *fg.shape[-2:]), t)
    return (1.0 - fg.amax(0, keepdim=True).clamp(0, 1)).pow(t)


def label_scores(fg: Tensor, classes: Sequence[int], background: int | None, mode: str, t: float) -> Tensor:
    """H×W int64 labels: arg-max over [background score, ``fg``] (no classes: all background).

    ``classes`` are the class ids of ``fg``'s rows; ``background`` the id of the background class, or None for
    class sets without one, whose "background" pixels are ignored instead.
    """
    bg_id = IGNORE_INDEX if background is None else background
    ids = torch.tensor([bg_id, *classes], dtype=torch.int64, device=fg.device)
    stack = torch.cat([background_score(fg, mode, t), fg], dim=0)
    return ids[stack.argmax(0)]


def banded_labels(
    fg: Tensor, classes: Sequence[int], background: int | None, mode: str, band: tuple[float, float] | None, t: float
) -> Tensor:
    """Labels with ``t``; with a band, labels from both of its values and IGNORE_INDEX where they disagree."""
    if band is None:
        return label_scores(fg, classes, background, mode, t)
    low, high = (label_scores(fg, classes, background, mode, value) for value in band)
    return torch.where(low == high, low, torch.full_like(low, IGNORE_INDEX))


def filled_boxes(boxes: Tensor, height: int, width: int, background: int | None) -> Tensor:
    """The plain box baseline: each box filled with its class, smaller boxes drawn over larger ones."""
    out = torch.full((height, width), IGNORE_INDEX if background is None else background, dtype=torch.int64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in torch.argsort(areas, descending=True).tolist():
        rows, cols = box_pixel_slices(boxes[i].cpu().numpy(), height, width)
        out[rows, cols] = int(boxes[i, 4])
    return out


def filled_image(classes: Sequence[int], height: int, width: int, background: int | None) -> Tensor:
    """The plain tag baseline: the whole image labelled with its first tag (background when it has none)."""
    value = classes[0] if classes else (IGNORE_INDEX if background is None else background)
    return torch.full((height, width), value, dtype=torch.int64)
