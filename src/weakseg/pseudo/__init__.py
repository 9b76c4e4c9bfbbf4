"""Refining class probabilities into pseudo labels and final predictions."""

from weakseg.pseudo.dense_crf import DenseCRF

__all__ = ["DenseCRF"]
