"""The built-in plugin: the library's own blocks, heads and ResNet variants.

They come in through the same hooks as any third-party plugin. The library ships no
layers for insertion points of its own; plugins provide them (``backbones-attention``
registers timm's SE, ECA, CBAM and global-context layers).
"""

from collections.abc import Callable

from torch import nn

from backbones.blocks import BUILTIN_BLOCKS
from backbones.heads import (
    classification_head,
    deeplabv3_head,
    fcn_head,
    fpn_head,
    semantic_fpn_head,
    upernet_head,
)
from backbones.hookspecs import hookimpl
from backbones.namespace import Namespace
from backbones.variants import RESNET_VARIANTS, ResNetSpec
from backbones.zoo.timm_models import TIMM
from backbones.zoo.tv_models import TV


@hookimpl
def backbones_register_blocks() -> dict[str, type[nn.Module]]:
    return dict(BUILTIN_BLOCKS)


@hookimpl
def backbones_register_layers() -> dict[str, Callable[..., nn.Module]]:
    return {}


@hookimpl
def backbones_register_heads() -> dict[str, Callable[..., nn.Module]]:
    return {
        "classification": classification_head,
        "fpn": fpn_head,
        "fcn": fcn_head,
        "deeplabv3": deeplabv3_head,
        "semantic_fpn": semantic_fpn_head,
        "upernet": upernet_head,
    }


@hookimpl
def backbones_register_backbones() -> dict[str, ResNetSpec]:
    return dict(RESNET_VARIANTS)


@hookimpl
def backbones_register_namespaces() -> dict[str, Namespace]:
    return {"timm": TIMM, "tv": TV}
