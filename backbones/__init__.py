"""backbones: multi-scale feature extractors for detection, segmentation and classification.

The names below are imported from their modules on first use (PEP 562), so
``import backbones`` stays cheap: torch's vision stack, timm and the plugins load when
a backbone is first looked up or built.

Example:
    >>> from backbones import create_backbone
    >>> bb = create_backbone("resnet50", out_indices=(1, 2, 3, 4))
    >>> bb.feature_info.reduction()
    [4, 8, 16, 32]
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports
    from backbones.catalog import (
        get_block,
        get_layer,
        list_backbones,
        list_blocks,
        list_heads,
        list_layers,
        list_namespaces,
        list_plugins,
        register_backbone,
        register_block,
        register_head,
        register_layer,
    )
    from backbones.contract import BackboneEntry, factory_entry
    from backbones.errors import (
        BackboneContractError,
        NameConflictError,
        PluginWarning,
        UnknownNameError,
        UnsupportedOptionError,
        WeightsError,
        WeightsLoadError,
    )
    from backbones.factory import create_backbone, create_head
    from backbones.features import FeatureInfo, FeatureLevel
    from backbones.hookspecs import hookimpl
    from backbones.inference import optimize_for_inference
    from backbones.layers import BlockLayer, BlockVariant
    from backbones.model import BackboneWithHead, create_model
    from backbones.namespace import Namespace
    from backbones.options import BackboneOptions
    from backbones.plugin_manager import PluginInfo
    from backbones.saving import load_backbone, save_backbone
    from backbones.training import convert_norm, param_groups, trainability
    from backbones.variants import ResNetSpec
    from backbones.weights import LoadReport, PretrainedCfg, load_pretrained

_PUBLIC: dict[str, str] = {
    "BackboneContractError": "backbones.errors",
    "BackboneEntry": "backbones.contract",
    "BackboneOptions": "backbones.options",
    "BackboneWithHead": "backbones.model",
    "BlockLayer": "backbones.layers",
    "BlockVariant": "backbones.layers",
    "convert_norm": "backbones.training",
    "FeatureInfo": "backbones.features",
    "FeatureLevel": "backbones.features",
    "LoadReport": "backbones.weights",
    "NameConflictError": "backbones.errors",
    "PluginInfo": "backbones.plugin_manager",
    "PluginWarning": "backbones.errors",
    "PretrainedCfg": "backbones.weights",
    "ResNetSpec": "backbones.variants",
    "UnknownNameError": "backbones.errors",
    "UnsupportedOptionError": "backbones.errors",
    "WeightsError": "backbones.errors",
    "WeightsLoadError": "backbones.errors",
    "create_backbone": "backbones.factory",
    "create_head": "backbones.factory",
    "create_model": "backbones.model",
    "factory_entry": "backbones.contract",
    "get_block": "backbones.catalog",
    "get_layer": "backbones.catalog",
    "hookimpl": "backbones.hookspecs",
    "list_backbones": "backbones.catalog",
    "list_blocks": "backbones.catalog",
    "list_heads": "backbones.catalog",
    "list_layers": "backbones.catalog",
    "list_namespaces": "backbones.catalog",
    "Namespace": "backbones.namespace",
    "list_plugins": "backbones.catalog",
    "load_backbone": "backbones.saving",
    "load_pretrained": "backbones.weights",
    "optimize_for_inference": "backbones.inference",
    "param_groups": "backbones.training",
    "register_backbone": "backbones.catalog",
    "register_block": "backbones.catalog",
    "register_head": "backbones.catalog",
    "register_layer": "backbones.catalog",
    "save_backbone": "backbones.saving",
    "trainability": "backbones.training",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'backbones' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain global lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
