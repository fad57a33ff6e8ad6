"""backbones-attention: timm's attention layers, SE/ECA/CBAM blocks and SE/ECA ResNets.

Installed, it is discovered through the ``backbones`` entry-point group; importing
it registers nothing. It contributes, as data:

* layers for the blocks' insertion points (:data:`LAYERS`): ``se``, ``eca``,
  ``cbam``, ``gc``, timm's own classes as timm's ``create_attn`` builds them;
* blocks (:data:`BLOCKS`): ``se_basic``, ``se_bottleneck``, ``eca_basic``,
  ``eca_bottleneck``, ``cbam_basic``, ``cbam_bottleneck``, each the built-in block
  with that layer as ``se`` after its last norm, where timm puts its ``attn_layer``;
* backbones: ``seresnet50``, ``seresnext50_32x4d``, ``ecaresnet50d`` (timm's
  definitions and weight names).

Example:
    >>> from backbones import BlockLayer, create_backbone
    >>> bb = create_backbone("seresnet50")  # doctest: +SKIP
    >>> bb = create_backbone("resnet50", block="cbam_bottleneck")  # doctest: +SKIP
    >>> bb = create_backbone(  # doctest: +SKIP
    ...     "resnet50", block_layers=[BlockLayer("gc", stages=(2, 3, 4))]
    ... )
"""

from backbones_attention.blocks import BLOCKS
from backbones_attention.layers import LAYERS

__all__ = ["BLOCKS", "LAYERS"]
__version__ = "0.1.0"
