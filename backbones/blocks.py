"""The built-in residual blocks, ``basic`` and ``bottleneck``.

Parameter names equal torchvision's and timm's (``conv1``, ``bn1``, ...,
``downsample``), so their checkpoints load unchanged.

The block contract, which third-party blocks follow too: a block is an
``nn.Module`` class with an int class attribute ``expansion`` (output channels
= ``planes * expansion``), built by the trunk as::

    Block(inplanes, planes, stride=..., downsample=..., groups=..., base_width=...,
          dilation=..., first_dilation=..., norm_layer=..., drop_path=..., **block_kwargs)

``downsample`` is the shortcut projection the trunk built (or ``None``),
``dilation`` the stage's dilation, ``first_dilation`` the dilation for the
block's first spatial conv (the previous stage's dilation in a stage's first
block, as in torchvision and timm), ``norm_layer`` a callable taking a channel
count, and ``drop_path`` the stochastic-depth rate of this block. A block that
cannot honour an argument raises ValueError naming it.
"""

from timm.layers import DropPath
from torch import Tensor, nn

from backbones.norm import NormLayer

__all__ = ["BasicBlock", "Bottleneck", "drop_path_module"]


def drop_path_module(rate: float) -> nn.Module:
    """Stochastic depth at ``rate`` (timm's DropPath), or an identity when it is 0."""
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def _zero_gamma(norm: nn.Module) -> None:
    weight = getattr(norm, "weight", None)
    if isinstance(weight, Tensor):  # a norm without affine weight has nothing to zero
        nn.init.zeros_(weight)


def _conv3x3(inplanes: int, planes: int, stride: int, groups: int, dilation: int) -> nn.Conv2d:
    return nn.Conv2d(
        inplanes,
        planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        dilation=dilation,
        bias=False,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (ResNet-18/34). Registered as ``basic``.

    Args:
        inplanes: input channels.
        planes: channels of both convs; the output has ``planes * expansion``.
        stride: stride of the first conv.
        downsample: the shortcut projection, or ``None`` for identity.
        groups: must be 1.
        base_width: must be 64.
        dilation: dilation of the second conv.
        first_dilation: dilation of the first conv (default ``dilation``).
        norm_layer: callable taking a channel count.
        drop_path: stochastic-depth rate.

    Raises:
        ValueError: ``groups`` or ``base_width`` is not the only value a basic block has.
    """

    expansion = 1

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
    ) -> None:
        super().__init__()
        if groups != 1:
            raise ValueError(f"the basic block supports only groups=1, got groups={groups}")
        if base_width != 64:
            raise ValueError(
                f"the basic block supports only base_width=64, got base_width={base_width}"
            )
        first_dilation = first_dilation or dilation
        self.conv1 = _conv3x3(inplanes, planes, stride, 1, first_dilation)
        self.bn1 = norm_layer(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.drop_path = drop_path_module(drop_path)
        self.act2 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Zero the last norm's gamma so the block starts as its shortcut."""
        _zero_gamma(self.bn2)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.drop_path(self.bn2(self.conv2(x)))
        if self.downsample is not None:  # after the main path: a lower memory peak
            shortcut = self.downsample(shortcut)
        x += shortcut  # in place: one activation-sized allocation fewer per block
        return self.act2(x)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped) conv, 1x1 expand, and a shortcut. Registered as ``bottleneck``.

    The stride sits on the 3x3 conv (ResNet v1.5, as in torchvision and timm).
    Its width is ``int(planes * base_width / 64) * groups``, which gives ResNeXt
    (``groups`` > 1) and Wide ResNet (``base_width`` = 128).

    Args:
        inplanes: input channels.
        planes: base channels; the output has ``planes * expansion``.
        stride: stride of the 3x3 conv.
        downsample: the shortcut projection, or ``None`` for identity.
        groups: groups of the 3x3 conv (ResNeXt cardinality).
        base_width: width per group.
        dilation: the stage's dilation.
        first_dilation: dilation of the 3x3 conv (default ``dilation``).
        norm_layer: callable taking a channel count.
        drop_path: stochastic-depth rate.
    """

    expansion = 4

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
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = norm_layer(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width, stride, groups, first_dilation or dilation)
        self.bn2 = norm_layer(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = norm_layer(outplanes)
        self.downsample = downsample
        self.drop_path = drop_path_module(drop_path)
        self.act3 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Zero the last norm's gamma so the block starts as its shortcut."""
        _zero_gamma(self.bn3)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.drop_path(self.bn3(self.conv3(x)))
        if self.downsample is not None:  # after the main path: a lower memory peak
            shortcut = self.downsample(shortcut)
        x += shortcut  # in place: one activation-sized allocation fewer per block
        return self.act3(x)
