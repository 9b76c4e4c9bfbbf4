"""``box-prior``: boxes → pseudo-labels from the image alone → segmentation, two stages and no CAM model.

1. ``pseudo``: every training box is labelled by its prior (``pseudo.box_prior``, :mod:`weakseg.pseudo.boxes`):
   ``grabcut`` (Simple Does It's GrabCut labels, Khoreva et al. 2017), or ``box`` (each box filled with its class,
   the plain baseline every boxes method has to beat); where boxes overlap, the smaller box's prior wins (the higher
   score; among whole boxes, the one drawn last), everything outside the boxes is background;
2. ``seg``: the segmentation model trained on those labels with cross-entropy, as the CAM pipelines' last stage.
"""

from __future__ import annotations

from weakseg.methods.base import Method, register_method
from weakseg.methods.cam import SEGMENTATION_ON_LABELS
from weakseg.methods.stages import PseudoLabel, Stage, Train


@register_method
class BoxPrior(Method):
    name = "box-prior"
    supervisions = ("boxes",)

    @classmethod
    def plan(cls, supervision: str, args: object) -> list[Stage]:
        return [PseudoLabel("pseudo"), Train("seg", SEGMENTATION_ON_LABELS, labels_from="pseudo")]
