"""timm's attention layers, by the names timm's ``create_attn`` gives them.

Each entry is the class ``timm.layers.get_attn(name)`` returns, so
``factory(channels, **kwargs)`` builds exactly what timm's ResNet builds for
``attn_layer=name``. They keep their input's shape, so they fit any insertion point:

* ``se``: :class:`timm.layers.SEModule`, squeeze-and-excitation (reduction 1/16,
  rounded to a multiple of 8, ReLU, sigmoid gate);
* ``eca``: :class:`timm.layers.EcaModule`, efficient channel attention (a 1-D conv
  whose kernel size follows the channel count, sigmoid gate);
* ``cbam``: :class:`timm.layers.cbam.CbamModule`, channel attention (average and max
  pooled, reduction 1/16) then 7x7 spatial attention. Its spatial branch has timm's
  own ``BatchNorm2d(1)``, whatever ``norm_layer`` the trunk uses, as in timm;
* ``gc``: :class:`timm.layers.GlobalContext`, the GCNet context block (attention
  pooling, a 1/8 bottleneck with LayerNorm, a sigmoid-scaled fusion).

This module only names the layers; the plugin's hooks register them.
"""

from collections.abc import Mapping
from types import MappingProxyType

from timm.layers import EcaModule, GlobalContext, SEModule
from timm.layers.cbam import CbamModule  # not re-exported by timm.layers

from backbones.layers import LayerFactory

__all__ = ["LAYERS"]

LAYERS: Mapping[str, LayerFactory] = MappingProxyType(
    {
        "se": SEModule,
        "eca": EcaModule,
        "cbam": CbamModule,
        "gc": GlobalContext,
    }
)
"""Registry name -> timm attention class, called as ``cls(channels, **kwargs)``."""
