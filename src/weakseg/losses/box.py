"""BoxInst's box losses (Tian et al., CVPR 2021) made semantic: the projection loss and the pairwise colour-affinity
loss on each box's class channel of a softmax segmentation.

BoxInst predicts one mask per instance; here the mask of a box of class ``c`` is the class-``c`` probability map,
and the boxes of one class in an image count as one mask (their union), so that two boxes of a class do not ask
the same channel for two different projections. With one box per class this is BoxInst's loss exactly. Both terms
run at the stride of BoxInst's mask branch (4): logits are average-pooled to it, and a stride cell is inside a box
when its centre is (AdelaiDet samples the full-size box masks at the cell centres).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import rgb2lab
from torch import Tensor, nn

from weakseg.data.sample import box_pixel_slices


def box_class_masks(boxes: list[Tensor], num_classes: int, height: int, width: int, stride: int = 1) -> Tensor:
    """``B×K×h×w`` 0/1 float on the grid of ``stride`` (``h = H / stride``): per image and class, the union of that
    class's boxes (``N×5 [x0, y0, x1, y1, c]`` in pixels); a cell is inside when its centre is (AdelaiDet samples
    the full-size box masks at the cell centres)."""
    out = torch.zeros(len(boxes), num_classes, height, width)
    for b, image_boxes in enumerate(boxes):
        for box in image_boxes.detach().cpu().numpy():
            scaled = np.concatenate([box[:4] / stride, box[4:]])
            rows, cols = box_pixel_slices(scaled, height, width)
            out[b, int(box[4]), rows, cols] = 1.0
    return out


def stride_sample(maps: Tensor, stride: int) -> Tensor:
    """``maps[..., s//2::s, s//2::s]``: the value at the centre of every stride cell (AdelaiDet's box bitmasks)."""
    start = stride // 2
    return maps[..., start::stride, start::stride]


def neighbours(x: Tensor, kernel_size: int = 3, dilation: int = 2) -> Tensor:
    """``B×C×(k²−1)×H×W``: each pixel's neighbours on a ``k×k`` grid with ``dilation``, the centre left out, zero
    beyond the border (BoxInst's ``unfold_wo_center``)."""
    b, c, h, w = x.shape
    pad = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    unfolded = F.unfold(x, kernel_size, dilation=dilation, padding=pad).reshape(b, c, kernel_size**2, h, w)
    centre = kernel_size**2 // 2
    return torch.cat([unfolded[:, :, :centre], unfolded[:, :, centre + 1 :]], dim=2)


def lab_similarity(
    images: Tensor, valid: Tensor, stride: int = 4, kernel_size: int = 3, dilation: int = 2, theta: float = 2.0
) -> Tensor:
    """``B×(k²−1)×h×w`` colour similarity ``exp(−‖lab_i − lab_j‖ / θ)`` of each pixel and its neighbours on the image
    average-pooled to ``stride`` (BoxInst: θ = 2), zero for neighbours outside the valid pixels or the image."""
    pooled = F.avg_pool2d(images.float(), stride, stride)
    rgb = pooled.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    lab = torch.from_numpy(np.stack([rgb2lab(image) for image in rgb])).permute(0, 3, 1, 2).float().to(images.device)
    inside = stride_sample(valid[:, None].float(), stride)[..., : lab.shape[-2], : lab.shape[-1]]
    difference = lab[:, :, None] - neighbours(lab, kernel_size, dilation)
    similarity = torch.exp(-difference.norm(dim=1) / theta)
    return similarity * neighbours(inside, kernel_size, dilation)[:, 0] * inside


def dice_loss(x: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """``1 − 2 Σ x·t / (Σ x² + Σ t² + eps)`` over the last dimension (BoxInst's ``dice_coefficient``)."""
    return 1.0 - 2.0 * (x * target).sum(-1) / ((x * x).sum(-1) + (target * target).sum(-1) + eps)


class BoxProjectionLoss(nn.Module):
    """BoxInst eq. 2: per image and box class ``c``, ``Dice(max_y m_c, max_y b_c) + Dice(max_x m_c, max_x b_c)`` with
    ``m_c`` the class's probability map and ``b_c`` the union of its boxes; the mean over (image, class) pairs."""

    def forward(self, probs: Tensor, box_masks: Tensor, valid: Tensor) -> Tensor:
        """``probs``, ``box_masks``: ``B×K×h×w``; ``valid``: ``B×h×w`` real pixels (padding projects as zero)."""
        probs = probs * valid[:, None].to(probs.dtype)
        present = box_masks.flatten(2).amax(-1) > 0  # B×K
        if not present.any():
            return probs.sum() * 0.0
        rows = dice_loss(probs.amax(-1)[present], box_masks.amax(-1)[present])
        cols = dice_loss(probs.amax(-2)[present], box_masks.amax(-2)[present])
        return (rows + cols).mean()


class PairwiseAffinityLoss(nn.Module):
    """BoxInst eq. 4: ``−log(m_i m_j + (1 − m_i)(1 − m_j))`` averaged over the edges (a pixel ``i`` and a neighbour
    ``j`` on the dilated 3×3 grid) whose colour similarity is at least ``threshold`` (0.3) and whose ``i`` lies in a
    box, ``m`` the probability of that box's class."""

    def __init__(self, threshold: float = 0.3) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, logits: Tensor, box_masks: Tensor, similarity: Tensor, dilation: int = 2) -> Tensor:
        """``logits``, ``box_masks``: ``B×K×h×w``; ``similarity``: ``B×8×h×w`` from :func:`lab_similarity`."""
        log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
        boxed = box_masks.flatten(2).amax(-1).amax(0) > 0  # the classes with a box in the batch: the others weigh 0
        log_p, box_masks = log_p[:, boxed], box_masks[:, boxed]
        log_not_p = torch.log((-torch.expm1(log_p)).clamp_min(1e-12))  # log(1 − p), accurate near p = 1
        same_fg = log_p[:, :, None] + neighbours(log_p, dilation=dilation)
        same_bg = log_not_p[:, :, None] + neighbours(log_not_p, dilation=dilation)
        loss = -torch.logaddexp(same_fg, same_bg)  # B×K×8×h×w
        weights = (similarity >= self.threshold).to(loss.dtype)[:, None] * box_masks[:, :, None]
        return (loss * weights).sum() / weights.sum().clamp_min(1.0)
