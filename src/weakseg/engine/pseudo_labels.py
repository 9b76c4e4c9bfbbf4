"""The pseudo-label stage: a CAM learner's maps on every training image → refined label maps (with ignore), and
their quality against the training masks when those exist (the "seed" mIoU before and after refinement)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from weakseg import distributed
from weakseg.data.classes import IGNORE_INDEX, ClassSet
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.formats import write_label_png
from weakseg.data.sample import Sample, sample_classes
from weakseg.engine.device import normalize
from weakseg.engine.metrics import ConfusionMatrix, SegmentationMetrics, multilabel_map
from weakseg.errors import ConfigError
from weakseg.pseudo import DenseCRF
from weakseg.pseudo.boxes import box_priors
from weakseg.pseudo.cam import (
    SEED_THRESHOLDS,
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
from weakseg.pseudo.refiners import FEATURE_REFINERS, build_refiner

log = logging.getLogger(__name__)

# The maps a pseudo-label run scores against the masks, in report order.
STAGES = ("baseline", "seed", "refined")


@dataclass
class CamLabels:
    """One image's label maps: the plain baseline, the CAM seed, the refined seed and the training pseudo-label; with
    a threshold background, also each pixel's top foreground score and class, which give the seed at any threshold
    ``t`` (the class where the score exceeds ``t``, background elsewhere)."""

    baseline: Tensor
    seed: Tensor
    refined: Tensor
    pseudo: Tensor
    seed_peak: Tensor | None = None
    seed_class: Tensor | None = None


class PseudoLabeller:
    """Turns a CAM learner (a model whose forward with ``decode=False`` returns ``cam`` score maps) into labels; with
    no model, labels boxes from their priors alone (as with ``pseudo.box_cam_weight: 0``; a refiner that reads no
    features)."""

    def __init__(
        self, model: torch.nn.Module | None, class_set: ClassSet, cfg: PseudoLabelConfig, device: torch.device
    ) -> None:
        self.model, self.class_set, self.cfg, self.device = model, class_set, cfg.check(), device
        if model is None and cfg.refine in FEATURE_REFINERS:
            raise ConfigError(f"pseudo.refine: {cfg.refine} reads a CAM model's features; without one use none or pamr")
        if model is not None:
            model.eval()
        self.background = class_set.background
        self.cam_weight = 0.0 if model is None else cfg.box_cam_weight
        self.refine = build_refiner(cfg.refine)
        self.crf = DenseCRF()

    def _forward(self, x: Tensor) -> dict:
        return self.model(x, decode=False)

    @torch.no_grad()
    def __call__(self, sample: Sample, kind: str) -> CamLabels:
        """Label maps of one sample from its ``kind`` labels: ``tags``, ``boxes``, or ``mixed`` (its boxes when it has
        some, otherwise its classes: tags, or those of its points and scribbles)."""
        cfg, bg = self.cfg, self.background
        if kind == "mixed":
            kind = "boxes" if sample.boxes is not None and len(sample.boxes) else "tags"
            sample = sample.replace(tags=sample_classes(sample, self.class_set.ignore_index))
        if self.model is None and kind != "boxes":
            raise ConfigError(f"{sample.image_id}: only boxes are labelled without a CAM model, not {kind}")
        image = torch.from_numpy(sample.image).permute(2, 0, 1)[None].to(self.device)
        height, width = sample.size
        x = None if self.model is None else normalize(image, *self.model.mean_std)
        cams = None
        if kind != "boxes" or self.cam_weight > 0:
            cams = extract_cams(lambda t: self._forward(t)["cam"], x, cfg.scales, cfg.flip)[0]
        if kind == "boxes":
            boxes = torch.as_tensor(sample.boxes, dtype=torch.float32)
            classes = classes_by_box_area(boxes, bg)
            priors = None  # box-CAM alone reads no prior
            if self.cam_weight < 1:
                priors = torch.from_numpy(box_priors(sample.image, sample.boxes, cfg.box_prior)).to(self.device)
            fg = box_scores(cams, boxes.to(self.device), classes, priors, self.cam_weight)
            region = box_region(boxes, height, width).to(self.device)
            mode, t, band = "threshold", cfg.box_threshold, cfg.box_ignore_band
            baseline = filled_boxes(boxes, height, width, bg)
        else:
            classes = sorted({int(c) for c in sample.tags} - {bg})
            fg = max_normalise(cams[classes])
            region = None
            mode, t, band = cfg.background, cfg.background_param, cfg.ignore_band
            baseline = filled_image(classes, height, width, bg)
        seed = label_scores(fg, classes, bg, mode, t)
        peak = top = None
        if mode == "threshold":
            ids = torch.tensor(classes, dtype=torch.int64, device=fg.device)
            peak = fg.amax(0).cpu() if classes else torch.zeros(height, width)
            top = ids[fg.argmax(0)].cpu() if classes else torch.zeros(height, width, dtype=torch.int64)

        def features() -> Tensor:  # the CAM model's last features, for the refiners that read them
            return self._forward(x)["features"][-1].float()

        refined_fg = self.refine(fg, image, features, region) if classes else fg
        refined = label_scores(refined_fg, classes, bg, mode, t)
        pseudo = banded_labels(refined_fg, classes, bg, mode, band, t)
        if cfg.crf and classes:
            refined = self._crf(refined_fg, classes, image, mode, t)
            pseudo = torch.where(pseudo == IGNORE_INDEX, pseudo, refined)
        if region is not None and cfg.box_rest == "ignore" and bg is not None:
            pseudo = pseudo.masked_fill(region & (pseudo == bg), IGNORE_INDEX)
        return CamLabels(baseline.cpu(), seed.cpu(), refined.cpu(), pseudo.cpu(), peak, top)

    def _crf(self, fg: Tensor, classes: list[int], image: Tensor, mode: str, t: float) -> Tensor:
        stack = torch.cat([background_score(fg, mode, t), fg], dim=0).clamp_min(1e-5)
        probs = self.crf((stack / stack.sum(0, keepdim=True))[None], image)[0]
        bg_id = IGNORE_INDEX if self.background is None else self.background
        ids = torch.tensor([bg_id, *classes], dtype=torch.int64, device=probs.device)
        return ids[probs.argmax(0)]


def classes_by_box_area(boxes: Tensor, background: int | None) -> list[int]:
    """The foreground classes of ``boxes`` (N×5), the class of the smallest box first: labelling takes the first of
    equal scores, so where the boxes of two classes overlap with equal scores, the smaller box's class wins, as in
    the filled-box baseline."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    smallest: dict[int, float] = {}
    for c, area in zip(boxes[:, 4].long().tolist(), areas.tolist(), strict=True):
        if c != background:
            smallest[c] = min(area, smallest.get(c, float("inf")))
    return sorted(smallest, key=lambda c: (smallest[c], c))


def make_pseudo_labels(
    model: torch.nn.Module | None,
    dataset: SegmentationDataset,
    kind: str,
    cfg: PseudoLabelConfig,
    device: torch.device,
    *,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Label every image of ``dataset`` from its ``kind`` labels; write the pseudo-labels to ``out_dir`` (palette
    PNGs, 255 = ignore) and, when the dataset has masks, score the maps against them.

    Returns ``{"images": n, "coverage": labelled fraction of the pseudo-labels}`` plus, with masks, ``baseline``,
    ``seed`` and ``refined`` metrics (mIoU, boundary F, J&F of dense maps), ``pseudo`` (mIoU over the pixels the
    pseudo-labels keep, the precision that the second stage trains on) and, when the background is a threshold,
    ``seed_thresholds`` (seed mIoU at each of ``SEED_THRESHOLDS`` and the best of them, the papers' seed figure).
    Under torchrun each process labels its share of the images and the scores are merged (every process returns
    them).
    """
    class_set = dataset.class_set
    labeller = PseudoLabeller(model, class_set, cfg, device)
    k, ignore = class_set.num_classes, class_set.ignore_index
    scores = {name: SegmentationMetrics(k, ignore) for name in STAGES}
    kept = ConfusionMatrix(k, ignore)
    sweep = torch.zeros(len(SEED_THRESHOLDS), k, k, dtype=torch.int64)
    swept = torch.zeros((), dtype=torch.int64)
    background = class_set.background or 0  # without a background class, its pixels are scored as 0 (``_dense``)
    labelled = total = 0
    has_masks = "mask" in dataset.kinds
    palette = class_set.palette_array()
    progress = progress and distributed.is_main()
    for i in tqdm(distributed.shard(len(dataset)), desc="pseudo-labels", disable=not progress, dynamic_ncols=True):
        sample = dataset[i]
        maps = labeller(sample, kind)
        labelled += int((maps.pseudo != IGNORE_INDEX).sum())
        total += maps.pseudo.numel()
        if out_dir is not None:
            write_label_png(out_dir / f"{sample.image_id}.png", maps.pseudo.numpy().astype("uint8"), palette)
        if has_masks:
            mask = torch.from_numpy(sample.maps["mask"].astype("int64"))
            for name in STAGES:
                scores[name].update(_dense(getattr(maps, name)), mask)
            keep = maps.pseudo != IGNORE_INDEX
            kept.update(torch.where(keep, maps.pseudo, 0), torch.where(keep, mask, ignore))
            if maps.seed_peak is not None:
                swept.fill_(1)
                sweep += threshold_confusions(maps.seed_peak, maps.seed_class, background, mask, k, ignore)
    scores = {name: distributed.merged(m) for name, m in scores.items()}
    kept = distributed.merged(kept)
    labelled, total = (sum(x) for x in zip(*distributed.all_gather_objects((labelled, total)), strict=True))
    result: dict = {"images": len(dataset), "coverage": labelled / max(total, 1), "kind": kind}
    if has_masks:
        for name in STAGES:
            m = scores[name].compute()
            result[name] = {key: m[key] for key in ("miou", "boundary_f", "jf", "per_class_iou")}
        result["pseudo"] = {key: value for key, value in kept.compute().items() if key in ("miou", "per_class_iou")}
        if distributed.all_reduce(swept, "max"):
            mious = [ConfusionMatrix.of_counts(m, ignore).compute()["miou"] for m in distributed.all_reduce(sweep)]
            best = max(range(len(mious)), key=mious.__getitem__)
            result["seed_thresholds"] = {
                "thresholds": list(SEED_THRESHOLDS),
                "miou": mious,
                "best": {"threshold": SEED_THRESHOLDS[best], "miou": mious[best]},
            }
    return result


@torch.no_grad()
def classifier_map(model: torch.nn.Module, dataset: SegmentationDataset, device: torch.device, *,
                   progress: bool = True) -> dict:  # fmt: skip
    """Multi-label mAP of a CAM learner's image scores (its class score maps on the whole image, average-pooled: the
    logits it is trained on) against the foreground classes of each image's mask, over the images of ``dataset``
    (which has masks). A classifier that ranks its own training images badly gives weak CAMs: this shows it at once.
    Under torchrun each process scores its share of the images."""
    class_set = dataset.class_set
    foreground = [c for c in range(class_set.num_classes) if c != class_set.background]
    model.eval()
    rows = []
    for i in tqdm(distributed.shard(len(dataset)), desc="classifier", disable=not (progress and distributed.is_main()),
                  dynamic_ncols=True):  # fmt: skip
        sample = dataset[i]
        image = torch.from_numpy(sample.image).permute(2, 0, 1)[None].to(device)
        scores = model(normalize(image, *model.mean_std), decode=False)["cam"].float().mean((2, 3))[0, foreground]
        rows.append((scores.cpu().numpy(), np.isin(foreground, np.unique(sample.maps["mask"]))))
    rows = [row for part in distributed.all_gather_objects(rows) for row in part]
    names = [class_set.names[c] for c in foreground]
    return multilabel_map(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), names)


def threshold_confusions(
    peak: Tensor,
    top_class: Tensor,
    background: int,
    target: Tensor,
    num_classes: int,
    ignore_index: int,
    thresholds: tuple[float, ...] = SEED_THRESHOLDS,
) -> Tensor:
    """``T×K×K`` confusion matrices (rows = ground truth) of the seed at every ascending threshold ``t``: a pixel is
    ``top_class`` where ``peak > t`` (:func:`label_scores`: the background wins ties) and ``background`` elsewhere.

    One histogram over (number of thresholds below the pixel's peak, ground truth, class), summed cumulatively,
    instead of one confusion matrix per threshold.
    """
    keep = target != ignore_index
    gt, cls, pk = target[keep], top_class[keep], peak[keep].contiguous()
    n, k = len(thresholds), num_classes
    below = torch.searchsorted(torch.tensor(thresholds, dtype=pk.dtype), pk)  # thresholds strictly below the peak
    fg = torch.bincount((below * k + gt) * k + cls, minlength=(n + 1) * k * k).reshape(n + 1, k, k)
    bg = torch.bincount(below * k + gt, minlength=(n + 1) * k).reshape(n + 1, k)
    counts = fg.flip(0).cumsum(0).flip(0)[1:]  # threshold j: foreground where more than j thresholds are below
    counts[:, :, background] += bg.cumsum(0)[:n]
    return counts


def _dense(labels: Tensor) -> Tensor:
    """Ignored pixels of a dense map (class sets without background) scored as class 0, i.e. as wrong."""
    return torch.where(labels == IGNORE_INDEX, 0, labels)
