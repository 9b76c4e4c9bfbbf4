from weakseg.losses.box import BoxProjectionLoss, PairwiseAffinityLoss
from weakseg.losses.cam import EquivarianceLoss, FeatureSimilarityLoss, ImportanceSamplingLoss
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.losses.ppc import PixelPrototypeContrastLoss
from weakseg.losses.regularized import BilateralKernel, DenseCRFLoss, EntropyLoss, NormalizedCutLoss
from weakseg.losses.spml import PixelSegmentContrastLoss

__all__ = [
    "BilateralKernel",
    "BoxProjectionLoss",
    "DenseCRFLoss",
    "EntropyLoss",
    "EquivarianceLoss",
    "FeatureSimilarityLoss",
    "ImportanceSamplingLoss",
    "NormalizedCutLoss",
    "PairwiseAffinityLoss",
    "PartialCrossEntropy",
    "PixelPrototypeContrastLoss",
    "PixelSegmentContrastLoss",
]
