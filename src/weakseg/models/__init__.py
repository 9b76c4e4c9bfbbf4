from weakseg.models.backbones import Backbone, BackboneInfo, create_backbone, create_pre_logits
from weakseg.models.heads import ASPP, CAMHead, DeepLabDecoder, EmbeddingClassifier, ProjectionHead
from weakseg.models.segmentor import ModelConfig, SegmentationModel, build_model

__all__ = [
    "ASPP",
    "Backbone",
    "BackboneInfo",
    "CAMHead",
    "DeepLabDecoder",
    "EmbeddingClassifier",
    "ModelConfig",
    "ProjectionHead",
    "SegmentationModel",
    "build_model",
    "create_backbone",
    "create_pre_logits",
]
