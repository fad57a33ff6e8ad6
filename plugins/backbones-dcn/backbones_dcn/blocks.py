"""A bottleneck whose 3x3 conv is a modulated deformable convolution (DCNv2).

``DCNv2Bottleneck`` (registry name ``dcnv2_bottleneck``) is ``backbones.blocks.Bottleneck``
with ``conv2`` built as a :class:`ModulatedDeformConv2d`: it overrides only
``make_conv2``. Everything else (``conv1``, ``bn1``, ``bn2``, ``conv3``, ``bn3``,
``downsample``, drop path, insertion points, ``zero_init_last``, the forward) is the
plain bottleneck's, under the same names.

``conv2.weight`` keeps the plain conv's shape ``(width, width // groups, 3, 3)`` and
name, so a plain ResNet checkpoint loads into it. The sampling offsets and the
modulation mask come from ``conv2.conv_offset`` (mmdet's and mmcv's name), a plain 3x3 conv over
the same input with ``conv2``'s stride, padding and dilation, whose weights and bias
start at zero. An untrained block therefore computes exactly what the plain
bottleneck computes.

torchvision (its ``deform_conv2d``) is imported when the first block is built, not when
the plugin is discovered: importing it takes a second or more, which listing the
registry or building a plain ResNet should not pay.
"""

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn import functional as F

from backbones.blocks import Bottleneck

__all__ = ["DCNv2Bottleneck", "ModulatedDeformConv2d", "OffsetConv2d"]

KERNEL_SIZE = 3


def _pair(value: int) -> tuple[int, int]:
    return (value, value)


deform_conv2d: Callable[..., Tensor] = cast(Callable[..., Tensor], None)
"""torchvision's ``torchvision.ops.deform_conv2d``, once :func:`_import_deform_conv2d` ran
(every :class:`ModulatedDeformConv2d` runs it when built, so TorchScript finds it)."""


def _import_deform_conv2d() -> None:
    global deform_conv2d
    if deform_conv2d is None:
        from torchvision.ops import deform_conv2d as op

        deform_conv2d = op


@torch.fx.wrap
def _modulated_deform_conv(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    # torchvision's deform_conv2d as a function torch.fx treats as a leaf: fx cannot
    # trace into it (it branches on tensor shapes), and
    # backbones.optimize_for_inference traces the whole backbone.
    return deform_conv2d(
        x, offset, weight, stride=stride, padding=padding, dilation=dilation, mask=mask
    )


class OffsetConv2d(nn.Module):
    """A conv2d that starts at zero weights and zero bias: the offset/mask predictor.

    Deliberately not an ``nn.Conv2d`` subclass: the backbones trunk re-initialises
    every ``nn.Conv2d`` (Kaiming normal) after it has built the blocks, which would
    replace the zero init with random weights and the untrained block would no
    longer equal the plain one. A module of its own keeps its zeros.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: stride.
        padding: zero padding on each side.
        dilation: dilation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def reset_parameters(self) -> None:
        """Zero the weights and bias: no offset and a unit mask (see ``ModulatedDeformConv2d``)."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        )


class ModulatedDeformConv2d(nn.Module):
    """A 3x3 modulated deformable conv (DCNv2) that predicts its own offsets and mask.

    ``weight`` is the conv's, shaped as a plain ``nn.Conv2d``'s
    ``(channels, channels // groups, 3, 3)``, without bias. ``conv_offset``, an
    :class:`OffsetConv2d` over the same input with the same stride, padding and
    dilation, predicts ``3 * deform_groups * 9`` channels: first
    ``2 * deform_groups * 9`` offsets in torchvision's layout (per offset group, per
    kernel tap, ``(dy, dx)`` in input pixels), then ``deform_groups * 9`` mask logits
    (per offset group, per kernel tap). The mask is ``2 * sigmoid(logits)``; see
    :meth:`offset_and_mask`.

    Args:
        channels: input and output channels.
        stride: stride.
        dilation: dilation; the padding equals it, which keeps the size at stride 1.
        groups: groups of the conv (ResNeXt cardinality); the offsets are not grouped.
        deform_groups: offset groups: the input channels are split into this many
            groups, each sampled at its own offsets. Must divide ``channels``.

    Raises:
        TypeError: ``deform_groups`` is not an int.
        ValueError: ``deform_groups`` is not positive or does not divide ``channels``.
    """

    def __init__(
        self,
        channels: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        deform_groups: int = 1,
    ) -> None:
        super().__init__()
        _import_deform_conv2d()
        if isinstance(deform_groups, bool) or not isinstance(deform_groups, int):
            raise TypeError(f"deform_groups must be a positive int, got {deform_groups!r}")
        if deform_groups < 1 or channels % deform_groups != 0:
            raise ValueError(
                f"deform_groups={deform_groups} is not accepted: it must be a positive "
                f"divisor of the 3x3 conv's {channels} input channels"
            )
        taps = KERNEL_SIZE * KERNEL_SIZE
        self.in_channels = self.out_channels = channels
        self.kernel_size = _pair(KERNEL_SIZE)
        self.stride = _pair(stride)
        self.padding = self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.offset_channels = 2 * deform_groups * taps
        self.mask_channels = deform_groups * taps
        self.weight = nn.Parameter(torch.empty(channels, channels // groups, *self.kernel_size))
        self.register_parameter("bias", None)
        self.conv_offset = OffsetConv2d(
            channels,
            self.offset_channels + self.mask_channels,
            KERNEL_SIZE,
            stride=stride,
            padding=dilation,
            dilation=dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal weights (fan out), as the trunk gives a plain conv; zero offsets."""
        # The trunk's init pass only sees nn.Conv2d, which this is not.
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.conv_offset.reset_parameters()

    def offset_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The sampling offsets and modulation mask for the input ``x``.

        The mask is ``2 * sigmoid(logits)``, in (0, 2), not DCNv2's plain
        ``sigmoid(logits)``. ``conv_offset`` starts at zero, so the logits start at
        0, and sigmoid(0) = 0.5 would halve every tap: an untrained block would not
        compute what the plain bottleneck (or the plain checkpoint loaded into it)
        computes. ``2 * sigmoid`` is exactly 1 at 0 (0.5 and 2 are exact in binary
        floating point), so zero offsets and a unit mask make this the plain 3x3
        conv, and fine-tuning starts from the pretrained network's function.
        The mask can still switch a tap off (towards 0) and may also amplify it (up to 2).
        """
        offset, logits = torch.split(
            self.conv_offset(x), [self.offset_channels, self.mask_channels], dim=1
        )
        return offset, 2.0 * torch.sigmoid(logits)

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offset_and_mask(x)
        return _modulated_deform_conv(
            x, offset, mask, self.weight, self.stride, self.padding, self.dilation
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}, bias=False"
        )


class DCNv2Bottleneck(Bottleneck):
    """Bottleneck with a modulated deformable 3x3 conv. Registered as ``dcnv2_bottleneck``.

    Follows the backbones block contract: built by the trunk with
    :class:`backbones.blocks.Bottleneck`'s arguments (insertion-point ``layers``
    included), plus ``deform_groups`` from ``create_backbone(block_kwargs=...)``.
    ``conv2`` is a :class:`ModulatedDeformConv2d`, with its offset/mask predictor
    at ``conv2.conv_offset``.

    Args:
        *args, **kwargs: as :class:`backbones.blocks.Bottleneck`.
        deform_groups: offset groups: the 3x3 conv's input channels are split into
            this many groups, each sampled at its own offsets. Must divide the width.

    Raises:
        TypeError: ``deform_groups`` is not an int.
        ValueError: ``deform_groups`` is not positive or does not divide the width.
    """

    def __init__(self, *args: Any, deform_groups: int = 1, **kwargs: Any) -> None:
        # Bottleneck.__init__ calls make_conv2, which reads it: set before, as plain data.
        self.deform_groups = deform_groups
        super().__init__(*args, **kwargs)

    def make_conv2(self, width: int, *, stride: int, dilation: int, groups: int) -> nn.Module:
        """The deformable 3x3 conv, in place of the plain one."""
        return ModulatedDeformConv2d(
            width,
            stride=stride,
            dilation=dilation,
            groups=groups,
            deform_groups=self.deform_groups,
        )

    def offset_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``conv2``'s offsets and mask for its input ``x``; see ``ModulatedDeformConv2d``."""
        return cast(ModulatedDeformConv2d, self.conv2).offset_and_mask(x)
