from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.losses.regularized import BilateralKernel, DenseCRFLoss, EntropyLoss, NormalizedCutLoss

__all__ = ["BilateralKernel", "DenseCRFLoss", "EntropyLoss", "NormalizedCutLoss", "PartialCrossEntropy"]
