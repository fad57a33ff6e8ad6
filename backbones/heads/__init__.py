"""Heads: modules that turn a backbone's feature maps into task outputs.

A head factory is called as ``factory(feature_info=..., **options)`` and reads
channels and strides from ``feature_info``; the head's forward takes the list
of feature maps.
"""

from backbones.heads.classification import ClassificationHead, classification_head
from backbones.heads.fpn import FPNHead, fpn_head
from backbones.heads.segmentation import (
    SegmentationHead,
    SemanticFPNHead,
    UperNetHead,
    deeplabv3_head,
    fcn_head,
    semantic_fpn_head,
    upernet_head,
)

__all__ = [
    "ClassificationHead",
    "FPNHead",
    "SegmentationHead",
    "SemanticFPNHead",
    "UperNetHead",
    "classification_head",
    "deeplabv3_head",
    "fcn_head",
    "fpn_head",
    "semantic_fpn_head",
    "upernet_head",
]
