"""Refining class probabilities into pseudo labels and final predictions.

Importing the package registers the maps its modules derive (``regions``, ``blots``), so that every batch built
where ``weakseg.pseudo`` is loaded (training through :mod:`weakseg.methods`, evaluation, pseudo-labelling) carries
them, filled where a sample lacks them.
"""

from weakseg.pseudo import oversegment, point_blots
from weakseg.pseudo.dense_crf import DenseCRF
from weakseg.pseudo.pamr import PAMR
from weakseg.pseudo.random_walk import RandomWalk

__all__ = ["PAMR", "DenseCRF", "RandomWalk", "oversegment", "point_blots"]
