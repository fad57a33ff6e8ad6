"""backbones-attention: SE, ECA and CBAM residual blocks for ``backbones``, built on timm's layers.

Installed, it is discovered through the ``backbones`` entry-point group; importing
it registers nothing. Blocks: ``se_basic``, ``se_bottleneck``, ``eca_basic``,
``eca_bottleneck``, ``cbam_basic``, ``cbam_bottleneck``. Backbones: ``seresnet50``,
``seresnext50_32x4d``, ``ecaresnet50d`` (timm's definitions and weight names).

Example:
    >>> from backbones import create_backbone
    >>> bb = create_backbone("seresnet50")  # doctest: +SKIP
    >>> bb = create_backbone("resnet50", block="cbam_bottleneck")  # doctest: +SKIP
"""

from backbones_attention.blocks import (
    AttentionBasicBlock,
    AttentionBottleneck,
    CbamBasicBlock,
    CbamBottleneck,
    EcaBasicBlock,
    EcaBottleneck,
    SEBasicBlock,
    SEBottleneck,
)

__all__ = [
    "AttentionBasicBlock",
    "AttentionBottleneck",
    "CbamBasicBlock",
    "CbamBottleneck",
    "EcaBasicBlock",
    "EcaBottleneck",
    "SEBasicBlock",
    "SEBottleneck",
]
__version__ = "0.1.0"
