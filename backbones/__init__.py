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
from backbones.model import BackboneWithHead, create_model
from backbones.plugin_manager import PluginInfo, list_plugins
from backbones.registry import (
    NameConflictError,
    UnknownNameError,
    create_backbone,
    create_head,
    get_block,
    list_backbones,
    list_blocks,
    list_heads,
    register_backbone,
    register_block,
    register_head,
)
from backbones.variants import ResNetSpec
from backbones.weights import (
    LoadReport,
    PretrainedCfg,
    WeightsError,
    WeightsLoadError,
    load_backbone,
    load_pretrained,
    save_backbone,
)

__all__ = [
    "BackboneWithHead",
    "FeatureInfo",
    "FeatureLevel",
    "LoadReport",
    "NameConflictError",
    "PluginInfo",
    "PretrainedCfg",
    "ResNetSpec",
    "UnknownNameError",
    "WeightsError",
    "WeightsLoadError",
    "create_backbone",
    "create_head",
    "create_model",
    "get_block",
    "hookimpl",
    "list_backbones",
    "list_blocks",
    "list_heads",
    "list_plugins",
    "load_backbone",
    "load_pretrained",
    "optimize_for_inference",
    "register_backbone",
    "register_block",
    "register_head",
    "save_backbone",
]
__version__ = "0.1.0"
