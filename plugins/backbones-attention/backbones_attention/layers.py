"""timm's attention layers, by the names timm's ``create_attn`` gives them.

Each entry builds the class ``timm.layers.get_attn(name)`` returns (its ``cls``), so
``factory(channels, **kwargs)`` builds exactly what timm's ResNet builds for
``attn_layer=name``. timm is imported when the first layer is built, not when the
plugin is discovered: importing it takes a second or more, which listing the registry
or building a plain ResNet should not pay. The layers keep their input's shape, so they
fit any insertion point:

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

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

__all__ = ["LAYERS", "TimmLayer"]


class TimmLayer:
    """A timm layer class, imported on first use; calling it builds the layer.

    Args:
        module: the module that defines it (``"timm.layers.squeeze_excite"``).
        name: the class's name in that module (``"SEModule"``).
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    @property
    def cls(self) -> type[nn.Module]:
        """The class (imports timm the first time)."""
        cls: type[nn.Module] = getattr(importlib.import_module(self.module), self.name)
        return cls

    def __call__(self, channels: int, **kwargs: Any) -> nn.Module:
        return self.cls(channels, **kwargs)

    def __repr__(self) -> str:
        return f"TimmLayer({self.module}.{self.name})"


LAYERS: Mapping[str, TimmLayer] = MappingProxyType(
    {
        "se": TimmLayer("timm.layers.squeeze_excite", "SEModule"),
        "eca": TimmLayer("timm.layers.eca", "EcaModule"),
        "cbam": TimmLayer("timm.layers.cbam", "CbamModule"),
        "gc": TimmLayer("timm.layers.global_context", "GlobalContext"),
    }
)
"""Registry name -> timm attention class, built as ``factory(channels, **kwargs)``."""
