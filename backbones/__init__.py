"""backbones: multi-scale feature extractors for detection, segmentation and classification.

Example:
    >>> from backbones import create_backbone
    >>> bb = create_backbone("resnet50", out_indices=(1, 2, 3, 4))
    >>> bb.feature_info.reduction()
    [4, 8, 16, 32]
"""

from backbones.features import FeatureInfo, FeatureLevel
from backbones.hookspecs import hookimpl
from backbones.inference import optimize_for_inference
from backbones.registry import (
    UnknownNameError,
    create_backbone,
    get_block,
    list_backbones,
    list_blocks,
    register_backbone,
    register_block,
)
from backbones.variants import ResNetSpec

__all__ = [
    "FeatureInfo",
    "FeatureLevel",
    "ResNetSpec",
    "UnknownNameError",
    "create_backbone",
    "get_block",
    "hookimpl",
    "list_backbones",
    "list_blocks",
    "optimize_for_inference",
    "register_backbone",
    "register_block",
]
__version__ = "0.1.0"
