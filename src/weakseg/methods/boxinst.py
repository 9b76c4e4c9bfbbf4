"""``boxinst``: BoxInst's box losses (Tian et al., CVPR 2021) on a semantic segmentation model, one stage.

``L = CE(outside the boxes → background) + proj_weight · L_proj + ramp · pairwise_weight · L_pairwise``: every pixel
outside all of a crop's boxes is background, each box class's probability map must project onto the x and y axes
as its boxes do (:class:`~weakseg.losses.BoxProjectionLoss`), and inside the boxes neighbours of similar colour
share a label (:class:`~weakseg.losses.PairwiseAffinityLoss`), ramped in linearly over the first
``pairwise_warmup`` of the schedule (BoxInst: 10k of 90k iterations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from weakseg.errors import ConfigError
from weakseg.losses import BoxProjectionLoss, PairwiseAffinityLoss, PartialCrossEntropy
from weakseg.losses.box import box_class_masks, lab_similarity, stride_sample
from weakseg.methods.base import Method, register_method
from weakseg.pseudo.cam import box_region


@dataclass
class BoxInstArgs:
    proj_weight: float = 1.0
    pairwise_weight: float = 1.0
    pairwise_threshold: float = 0.3  # τ: edges of colour similarity below it are not supervised
    pairwise_warmup: float = 0.11  # fraction of train.steps over which the pairwise weight ramps from 0 to 1
    stride: int = 4  # the mask branch's stride, at which both box terms run
    dilation: int = 2


@register_method
class BoxInst(Method):
    name = "boxinst"
    supervisions = ("boxes",)
    Args = BoxInstArgs

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        args = self.args
        if self.class_set.background is None:
            raise ConfigError("method 'boxinst' labels the pixels outside the boxes background: the class set has none")
        if args.stride < 1 or args.dilation < 1:
            raise ConfigError(f"method_args.stride and dilation must be >= 1, got {args.stride}, {args.dilation}")
        if not 0.0 <= args.pairwise_warmup <= 1.0:
            raise ConfigError(f"method_args.pairwise_warmup must be in [0, 1], got {args.pairwise_warmup}")
        self.background_ce = PartialCrossEntropy(self.class_set.ignore_index)
        self.projection = BoxProjectionLoss()
        self.pairwise = PairwiseAffinityLoss(args.pairwise_threshold)

    def ramp(self) -> float:
        warmup = self.args.pairwise_warmup * self.total_steps
        return 1.0 if warmup <= 0 else min(self.step / warmup, 1.0)

    def loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        args, logits = self.args, outputs["logits"]
        height, width = batch["valid"].shape[-2:]
        k, device = self.class_set.num_classes, logits.device
        inside = torch.stack([box_region(boxes, height, width) for boxes in batch["boxes"]]).to(device)
        outside = batch["valid"] & ~inside
        background = torch.full_like(batch["valid"], self.class_set.ignore_index, dtype=torch.int64)
        ce = self.background_ce(logits, background.masked_fill(outside, self.class_set.background))
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        coarse = F.avg_pool2d(logits.float(), args.stride, args.stride)
        h, w = coarse.shape[-2:]
        boxes = box_class_masks(batch["boxes"], k, h, w, args.stride).to(device)
        valid = stride_sample(batch["valid"], args.stride)[:, :h, :w]
        proj = self.projection(coarse.softmax(1), boxes, valid)
        terms = {"ce": ce.detach(), "proj": proj.detach()}
        loss = ce + args.proj_weight * proj
        ramp = self.ramp()
        if args.pairwise_weight and ramp > 0:
            similarity = lab_similarity(batch["image"], batch["valid"], args.stride, dilation=args.dilation)
            pairwise = self.pairwise(coarse, boxes, similarity[..., :h, :w], args.dilation)
            terms["pairwise"] = pairwise.detach()
            loss = loss + ramp * args.pairwise_weight * pairwise
        return loss, terms
