"""Residual blocks with channel (and spatial) attention: SE, ECA and CBAM.

Each block is the built-in :class:`backbones.blocks.BasicBlock` or
:class:`backbones.blocks.Bottleneck` plus one attention module, held as the
attribute ``se`` and applied where timm's ResNet applies its ``attn_layer``:
after the block's last norm (``bn2`` / ``bn3``), before stochastic depth and
the residual add. The attention modules are timm's own (``timm.layers``
``SEModule``, ``EcaModule``, ``CbamModule``), built as timm's ``create_attn``
builds them, ``Module(out_channels)`` with default arguments, so weight names
(``layer1.0.se.fc1.weight``, ...), their order in the ``state_dict`` and the
numbers equal timm's ``attn_layer="se" | "eca" | "cbam"`` ResNets.

The blocks follow the block contract of :mod:`backbones.blocks`, plus one optional
keyword, ``attn_kwargs``, passed to the attention module (e.g. through
``create_backbone(..., block_kwargs={"attn_kwargs": {"rd_ratio": 0.25}})``);
without it the module is timm's default.
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule  # not re-exported by timm.layers
from torch import Tensor, nn

from backbones.blocks import BasicBlock, Bottleneck

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

NormLayer = Callable[[int], nn.Module]
"""Builds a normalization module for a channel count (the trunk's ``norm_layer``)."""

AttnLayer = Callable[..., nn.Module]
"""Builds an attention module; called as ``attn_layer(channels, **attn_kwargs)``."""


def _make_attn(
    owner: type[nn.Module], channels: int, attn_kwargs: Mapping[str, Any] | None
) -> nn.Module:
    """``owner.attn_layer(channels, **attn_kwargs)``, with errors that name the culprit."""
    layer: AttnLayer | None = getattr(owner, "attn_layer", None)
    if layer is None:
        raise TypeError(
            f"{owner.__qualname__} has no attention layer: subclasses of the attention "
            f"blocks set the class attribute 'attn_layer' (e.g. timm.layers.SEModule)"
        )
    if attn_kwargs is None:
        attn_kwargs = {}
    elif not isinstance(attn_kwargs, Mapping):
        raise TypeError(f"attn_kwargs must be a dict or None, got {attn_kwargs!r}")
    try:
        return layer(channels, **attn_kwargs)
    except TypeError as err:
        if not attn_kwargs:
            raise
        name = getattr(layer, "__name__", repr(layer))
        raise TypeError(  # most likely an unknown keyword: say which option carried it
            f"attn_kwargs={dict(attn_kwargs)!r} are not accepted by {name}: {err}"
        ) from err


def _place_after(parent: nn.Module, name: str, anchor: str) -> None:
    """Reorder ``parent``'s children so that ``name`` directly follows ``anchor``.

    Submodule order is ``state_dict`` order: moving the attention module up to
    right after the last norm (before ``downsample``) gives timm's key order exactly.
    """
    names = [key for key, _ in parent.named_children()]
    for key in names[names.index(anchor) + 1 : names.index(name)]:
        child = parent.get_submodule(key)
        delattr(parent, key)
        parent.add_module(key, child)  # re-registered last, so after ``name``


class AttentionBasicBlock(BasicBlock):
    """A basic block (two 3x3 convs) with an attention module ``se`` after ``bn2``.

    Subclasses choose the module with the class attribute ``attn_layer``, a
    callable taking the channel count (timm's attention-layer convention).

    Args:
        inplanes, planes, stride, downsample, groups, base_width, dilation,
        first_dilation, norm_layer, drop_path: as :class:`backbones.blocks.BasicBlock`.
        attn_kwargs: extra keyword arguments for ``attn_layer`` (default: none, timm's defaults).

    Raises:
        ValueError: ``groups != 1`` or ``base_width != 64`` (a basic block has neither).
        TypeError: ``attn_kwargs`` is not a mapping, or ``attn_layer`` refuses it.
    """

    attn_layer: ClassVar[AttnLayer | None] = None

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        drop_path: float = 0.0,
        attn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            inplanes,
            planes,
            stride=stride,
            downsample=downsample,
            groups=groups,
            base_width=base_width,
            dilation=dilation,
            first_dilation=first_dilation,
            norm_layer=norm_layer,
            drop_path=drop_path,
        )
        self.se = _make_attn(type(self), planes * self.expansion, attn_kwargs)
        _place_after(self, "se", "bn2")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.drop_path(self.se(self.bn2(self.conv2(x))))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut  # in place, as the built-in block: x is the attention's fresh output
        return self.act2(x)


class AttentionBottleneck(Bottleneck):
    """A bottleneck block (1x1, 3x3, 1x1) with an attention module ``se`` after ``bn3``.

    Subclasses choose the module with the class attribute ``attn_layer``, a
    callable taking the channel count (timm's attention-layer convention).

    Args:
        inplanes, planes, stride, downsample, groups, base_width, dilation,
        first_dilation, norm_layer, drop_path: as :class:`backbones.blocks.Bottleneck`.
        attn_kwargs: extra keyword arguments for ``attn_layer`` (default: none, timm's defaults).

    Raises:
        TypeError: ``attn_kwargs`` is not a mapping, or ``attn_layer`` refuses it.
    """

    attn_layer: ClassVar[AttnLayer | None] = None

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        drop_path: float = 0.0,
        attn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            inplanes,
            planes,
            stride=stride,
            downsample=downsample,
            groups=groups,
            base_width=base_width,
            dilation=dilation,
            first_dilation=first_dilation,
            norm_layer=norm_layer,
            drop_path=drop_path,
        )
        self.se = _make_attn(type(self), planes * self.expansion, attn_kwargs)
        _place_after(self, "se", "bn3")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.drop_path(self.se(self.bn3(self.conv3(x))))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut  # in place, as the built-in block: x is the attention's fresh output
        return self.act3(x)


class SEBasicBlock(AttentionBasicBlock):
    """Basic block with squeeze-and-excitation (timm ``SEModule``: reduction 1/16, divisor 8).

    Registered as ``se_basic``; equals timm's ``BasicBlock(attn_layer="se")`` (``seresnet18``).
    """

    attn_layer = SEModule


class SEBottleneck(AttentionBottleneck):
    """Bottleneck with squeeze-and-excitation (timm ``SEModule``: reduction 1/16, divisor 8).

    Registered as ``se_bottleneck``; equals timm's ``Bottleneck(attn_layer="se")``
    (``seresnet50``, ``seresnext50_32x4d``).
    """

    attn_layer = SEModule


class EcaBasicBlock(AttentionBasicBlock):
    """Basic block with efficient channel attention (timm ``EcaModule``, adaptive kernel).

    Registered as ``eca_basic``; equals timm's ``BasicBlock(attn_layer="eca")``.
    """

    attn_layer = EcaModule


class EcaBottleneck(AttentionBottleneck):
    """Bottleneck with efficient channel attention (timm ``EcaModule``, adaptive kernel).

    Registered as ``eca_bottleneck``; equals timm's ``Bottleneck(attn_layer="eca")``
    (``ecaresnet50d``).
    """

    attn_layer = EcaModule


class CbamBasicBlock(AttentionBasicBlock):
    """Basic block with CBAM channel + spatial attention (timm ``CbamModule``).

    Registered as ``cbam_basic``; equals timm's ``BasicBlock(attn_layer="cbam")``.
    The spatial branch's norm is timm's own ``BatchNorm2d(1)``, whatever ``norm_layer`` is.
    """

    attn_layer = CbamModule


class CbamBottleneck(AttentionBottleneck):
    """Bottleneck with CBAM channel + spatial attention (timm ``CbamModule``).

    Registered as ``cbam_bottleneck``; equals timm's ``Bottleneck(attn_layer="cbam")``.
    The spatial branch's norm is timm's own ``BatchNorm2d(1)``, whatever ``norm_layer`` is.
    """

    attn_layer = CbamModule
