"""Labellers of a ``Relabel`` stage other than the model's plain prediction: SPML's pseudo-labelling of the training
images with its initial classifier (Ke et al. ICLR 2021, appendix; METHODS.md §4).

Per training image, the classifier's softmax on the whole image is divided, class by class, by its maximum; the
classes the image's weak labels do not name are zeroed (the background is always kept); with ``walk``, the maps are
diffused by :class:`~weakseg.pseudo.RandomWalk` on the model's embedding at 1/8 of the image (the embedding's stride
4, average-pooled ×2); with ``crf``, refined by :class:`~weakseg.pseudo.DenseCRF`; the arg-max is the label.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from weakseg import distributed
from weakseg.data.classes import ClassSet
from weakseg.data.dataset import SegmentationDataset
from weakseg.data.formats import write_label_png
from weakseg.data.sample import Sample, sample_classes
from weakseg.engine.device import normalize
from weakseg.engine.metrics import SegmentationMetrics
from weakseg.methods.spml import EMBEDDING
from weakseg.pseudo import DenseCRF
from weakseg.pseudo.random_walk import RandomWalk


def image_classes(sample: Sample, num_classes: int, background: int | None, ignore_index: int) -> Tensor:
    """``K`` booleans: the classes the sample's weak labels name, and the background."""
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[torch.from_numpy(sample_classes(sample, ignore_index))] = True
    if background is not None:
        present[background] = True
    return present


def class_normalised(probs: Tensor, present: Tensor, eps: float = 1e-5) -> Tensor:
    """``K×h×w`` scores: each class map divided by its maximum, the classes not ``present`` zeroed."""
    peak = probs.flatten(1).amax(1).clamp_min(eps)[:, None, None]
    return probs / peak * present[:, None, None].to(probs)


class SPMLLabeller:
    """SPML's labels of one training image from a model with a classifier and an ``embedding`` head."""

    def __init__(
        self, model: torch.nn.Module, class_set: ClassSet, device: torch.device, *, walk: bool, crf: bool
    ) -> None:
        self.model, self.class_set, self.device = model.eval(), class_set, device
        self.walk = RandomWalk() if walk else None
        self.crf = DenseCRF() if crf else None

    @torch.no_grad()
    def __call__(self, sample: Sample) -> Tensor:
        """``H×W`` int64 labels."""
        cs = self.class_set
        image = torch.from_numpy(sample.image).permute(2, 0, 1)[None].to(self.device)
        out = self.model(normalize(image, *self.model.mean_std))
        probs = out["logits"].float().softmax(1)[0]
        present = image_classes(sample, cs.num_classes, cs.background, cs.ignore_index).to(self.device)
        scores = class_normalised(probs, present)[None]
        if self.walk is not None:
            embedding = F.avg_pool2d(out[EMBEDDING].float(), 2, ceil_mode=True)
            scores = self.walk(F.avg_pool2d(scores, 2, ceil_mode=True), embedding)
        scores = F.interpolate(scores, size=sample.size, mode="bilinear", align_corners=False)
        if self.crf is not None:
            scores = self.crf(scores / scores.sum(1, keepdim=True).clamp_min(1e-8), image.float())
        return scores[0].argmax(0).cpu()


LABELLERS: dict[str, Callable[..., SPMLLabeller]] = {
    "spml": lambda model, class_set, device, crf: SPMLLabeller(model, class_set, device, walk=True, crf=crf),
    "spml-no-walk": lambda model, class_set, device, crf: SPMLLabeller(model, class_set, device, walk=False, crf=crf),
}


def relabel_training_images(
    labeller: Callable[[Sample], Tensor],
    dataset: SegmentationDataset,
    *,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Label every image of ``dataset``, write the maps to ``out_dir`` and, when it has masks, score them (mIoU,
    boundary F, J&F, per-class IoU). Under torchrun each process labels its share and the scores are merged."""
    class_set = dataset.class_set
    score = SegmentationMetrics(class_set.num_classes, class_set.ignore_index)
    has_masks = "mask" in dataset.kinds
    palette = class_set.palette_array()
    progress = progress and distributed.is_main()
    for i in tqdm(distributed.shard(len(dataset)), desc="relabel", disable=not progress, dynamic_ncols=True):
        sample = dataset[i]
        labels = labeller(sample)
        if out_dir is not None:
            write_label_png(out_dir / f"{sample.image_id}.png", labels.numpy().astype("uint8"), palette)
        if has_masks:
            score.update(labels, torch.from_numpy(sample.maps["mask"].astype("int64")))
    result: dict = {"num_images": len(dataset)}
    if has_masks:
        m = distributed.merged(score).compute()
        result.update({key: m[key] for key in ("miou", "boundary_f", "jf", "per_class_iou")})
    return result
