"""Refining class probabilities into pseudo labels and final predictions."""

from weakseg.pseudo.dense_crf import DenseCRF
from weakseg.pseudo.pamr import PAMR
from weakseg.pseudo.random_walk import RandomWalk

__all__ = ["PAMR", "DenseCRF", "RandomWalk"]
