"""The backbones plugin: hook implementations, found through the ``backbones`` entry point.

The hooks only return what this distribution contributes; the backbones plugin
manager registers it.
"""

from torch import nn

from backbones import ResNetSpec, hookimpl
from backbones_dcn.blocks import DCNv2Bottleneck

__all__ = ["DCN_STAGES_3_4", "backbones_register_backbones", "backbones_register_blocks"]

ORIGIN = "backbones-dcn"

DCN_STAGES_3_4 = ("bottleneck", "bottleneck", "dcnv2_bottleneck", "dcnv2_bottleneck")
"""Plain bottlenecks in layer1 and layer2, deformable ones in layer3 and layer4."""


@hookimpl
def backbones_register_blocks() -> dict[str, type[nn.Module]]:
    """The ``dcnv2_bottleneck`` block."""
    return {"dcnv2_bottleneck": DCNv2Bottleneck}


@hookimpl
def backbones_register_backbones() -> dict[str, ResNetSpec]:
    """ResNet-50 and ResNet-101 with deformable bottlenecks in layer3 and layer4."""
    return {
        "resnet50_dcnv2": ResNetSpec(DCN_STAGES_3_4, (3, 4, 6, 3), origin=ORIGIN),
        "resnet101_dcnv2": ResNetSpec(DCN_STAGES_3_4, (3, 4, 23, 3), origin=ORIGIN),
    }
