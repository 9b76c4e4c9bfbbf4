from weakseg.losses.cam import EquivarianceLoss, FeatureSimilarityLoss, ImportanceSamplingLoss
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.losses.ppc import PixelPrototypeContrastLoss
from weakseg.losses.regularized import BilateralKernel, DenseCRFLoss, EntropyLoss, NormalizedCutLoss

__all__ = [
    "BilateralKernel",
    "DenseCRFLoss",
    "EntropyLoss",
    "EquivarianceLoss",
    "FeatureSimilarityLoss",
    "ImportanceSamplingLoss",
    "NormalizedCutLoss",
    "PartialCrossEntropy",
    "PixelPrototypeContrastLoss",
]
