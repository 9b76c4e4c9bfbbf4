from weakseg.losses.partial_ce import PartialCrossEntropy

__all__ = ["PartialCrossEntropy"]
