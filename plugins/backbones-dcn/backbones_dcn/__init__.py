"""backbones-dcn: a modulated deformable convolution (DCNv2) bottleneck for ``backbones``.

Installing this distribution is enough: the ``backbones`` plugin manager finds it
through its ``backbones`` entry point (``backbones_dcn.plugin``) and registers the
``dcnv2_bottleneck`` block and the ``resnet50_dcnv2`` / ``resnet101_dcnv2`` backbones.
"""

from backbones_dcn.blocks import DCNv2Bottleneck, ModulatedDeformConv2d, OffsetConv2d

__all__ = ["DCNv2Bottleneck", "ModulatedDeformConv2d", "OffsetConv2d"]
__version__ = "0.1.0"
