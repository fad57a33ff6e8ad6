"""SE, ECA and CBAM residual blocks: the built-in blocks with an attention layer, as data.

Each variant is :class:`backbones.blocks.BasicBlock` or
:class:`backbones.blocks.Bottleneck` with one of this plugin's layers at the block's
last insertion point, right after its last norm (``bn2`` / ``bn3``) and before
stochastic depth and the residual add, under the module name ``se``. That is where
and how timm's ResNet builds its ``attn_layer`` (``self.se = create_attn(attn_layer,
outplanes)``, whatever the type), so the weight names (``layer1.0.se.fc1.weight``,
...), their order in the ``state_dict`` and the numbers equal timm's
``attn_layer="se" | "eca" | "cbam"`` ResNets.

This module only describes the variants; the trunk builds them.
"""

from collections.abc import Mapping
from types import MappingProxyType

from backbones import BlockLayer, BlockVariant
from backbones.blocks import BasicBlock, Bottleneck

__all__ = ["BLOCKS"]

# timm names its attention module "se" whatever the type.
_MODULE_NAME = "se"


def _basic(layer: str) -> BlockVariant:
    # conv2 is the basic block's last conv: after_conv2 sits after bn2, before the add.
    return BlockVariant(BasicBlock, (BlockLayer(layer, position="after_conv2", name=_MODULE_NAME),))


def _bottleneck(layer: str) -> BlockVariant:
    return BlockVariant(Bottleneck, (BlockLayer(layer, position="after_conv3", name=_MODULE_NAME),))


BLOCKS: Mapping[str, BlockVariant] = MappingProxyType(
    {
        "se_basic": _basic("se"),
        "se_bottleneck": _bottleneck("se"),
        "eca_basic": _basic("eca"),
        "eca_bottleneck": _bottleneck("eca"),
        "cbam_basic": _basic("cbam"),
        "cbam_bottleneck": _bottleneck("cbam"),
    }
)
"""Registry name -> variant; the layer names are this plugin's (see ``LAYERS``)."""
