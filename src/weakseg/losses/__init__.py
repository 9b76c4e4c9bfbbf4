from weakseg.losses.cam import FeatureSimilarityLoss, ImportanceSamplingLoss
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.losses.regularized import BilateralKernel, DenseCRFLoss, EntropyLoss, NormalizedCutLoss

__all__ = [
    "BilateralKernel",
    "DenseCRFLoss",
    "EntropyLoss",
    "FeatureSimilarityLoss",
    "ImportanceSamplingLoss",
    "NormalizedCutLoss",
    "PartialCrossEntropy",
]
