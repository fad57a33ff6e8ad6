"""A bottleneck whose 3x3 conv is a modulated deformable convolution (DCNv2).

``DCNv2Bottleneck`` (registry name ``dcnv2_bottleneck``) is ``backbones.blocks.Bottleneck``
with ``conv2`` replaced by :class:`torchvision.ops.DeformConv2d`. Everything else
(``conv1``, ``bn1``, ``bn2``, ``conv3``, ``bn3``, ``downsample``, drop path,
``zero_init_last``) is the plain bottleneck's, under the same names.

``conv2`` keeps the plain conv's weight shape ``(width, width // groups, 3, 3)`` and
name, so a plain ResNet checkpoint loads into it. The sampling offsets and the
modulation mask come from ``conv2_offset``, a plain 3x3 conv over the same input
with ``conv2``'s stride, padding and dilation, whose weights and bias start at zero.
An untrained block therefore computes exactly what the plain bottleneck computes.
"""

from collections.abc import Callable

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import DeformConv2d, deform_conv2d

from backbones.blocks import Bottleneck

__all__ = ["DCNv2Bottleneck", "OffsetConv2d"]

KERNEL_SIZE = 3


def _pair(value: int) -> tuple[int, int]:
    return (value, value)


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
    # What DeformConv2d.forward computes (without bias), as a function torch.fx treats
    # as a leaf: fx cannot trace into torchvision's deform_conv2d (it branches on
    # tensor shapes), and backbones.optimize_for_inference traces the whole backbone.
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
        """Zero the weights and bias: no offset and a unit mask (see ``DCNv2Bottleneck``)."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        )


class DCNv2Bottleneck(Bottleneck):
    """Bottleneck with a modulated deformable 3x3 conv. Registered as ``dcnv2_bottleneck``.

    Follows the backbones block contract: built by the trunk with the arguments below,
    plus ``deform_groups`` from ``create_backbone(block_kwargs=...)``.

    ``conv2_offset`` predicts ``3 * deform_groups * 9`` channels at ``conv2``'s output
    resolution: first ``2 * deform_groups * 9`` offsets in torchvision's layout (per
    offset group, per kernel tap, ``(dy, dx)`` in input pixels), then
    ``deform_groups * 9`` mask logits (per offset group, per kernel tap). The mask
    is ``2 * sigmoid(logits)``; see :meth:`offset_and_mask`.

    Args:
        inplanes: input channels.
        planes: base channels; the output has ``planes * expansion``.
        stride: stride of the 3x3 conv.
        downsample: the shortcut projection, or ``None`` for identity.
        groups: groups of the 3x3 conv (ResNeXt cardinality); the offsets are not grouped.
        base_width: width per group.
        dilation: the stage's dilation.
        first_dilation: dilation of the 3x3 conv (default ``dilation``).
        norm_layer: callable taking a channel count.
        drop_path: stochastic-depth rate.
        deform_groups: offset groups: the 3x3 conv's input channels are split into
            this many groups, each sampled at its own offsets. Must divide the width.

    Raises:
        TypeError: ``deform_groups`` is not an int.
        ValueError: ``deform_groups`` is not positive or does not divide the width.
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
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        drop_path: float = 0.0,
        deform_groups: int = 1,
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
        if isinstance(deform_groups, bool) or not isinstance(deform_groups, int):
            raise TypeError(f"deform_groups must be a positive int, got {deform_groups!r}")
        # The plain bottleneck already sized its layers (ResNeXt and wide widths
        # included); conv1 feeds the 3x3 conv, so its output is the width.
        width = self.conv1.out_channels
        if deform_groups < 1 or width % deform_groups != 0:
            raise ValueError(
                f"deform_groups={deform_groups} is not accepted: it must be a positive "
                f"divisor of the 3x3 conv's {width} input channels"
            )
        d = first_dilation or dilation
        taps = KERNEL_SIZE * KERNEL_SIZE
        self.deform_groups = deform_groups
        self.offset_channels = 2 * deform_groups * taps
        self.mask_channels = deform_groups * taps

        # Same name and weight shape as the plain conv2, so plain checkpoints load.
        # Replacing the attribute keeps its place in the state_dict order.
        self.conv2 = DeformConv2d(  # type: ignore[assignment]  # the plain one is an nn.Conv2d
            width,
            width,
            KERNEL_SIZE,
            stride=stride,
            padding=d,
            dilation=d,
            groups=groups,
            bias=False,
        )
        # The trunk's init pass only sees nn.Conv2d; give conv2 the init it gives the
        # plain conv2 (Kaiming normal, fan_out) instead of DeformConv2d's default.
        nn.init.kaiming_normal_(self.conv2.weight, mode="fan_out", nonlinearity="relu")
        self.conv2_offset = OffsetConv2d(
            width,
            self.offset_channels + self.mask_channels,
            KERNEL_SIZE,
            stride=stride,
            padding=d,
            dilation=d,
        )

    def offset_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The sampling offsets and modulation mask for ``conv2``'s input ``x``.

        The mask is ``2 * sigmoid(logits)``, in (0, 2), not DCNv2's plain
        ``sigmoid(logits)``. ``conv2_offset`` starts at zero, so the logits start at
        0, and sigmoid(0) = 0.5 would halve every tap: an untrained block would not
        compute what the plain bottleneck (or the plain checkpoint loaded into it)
        computes. ``2 * sigmoid`` is exactly 1 at 0 (0.5 and 2 are exact in binary
        floating point), so zero offsets and a unit mask make ``conv2`` the plain
        3x3 conv, and fine-tuning starts from the pretrained network's function.
        The mask can still switch a tap off (towards 0) and may also amplify it (up to 2).
        """
        offset, logits = torch.split(
            self.conv2_offset(x), [self.offset_channels, self.mask_channels], dim=1
        )
        return offset, 2.0 * torch.sigmoid(logits)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        offset, mask = self.offset_and_mask(x)
        # conv2(x, offset, mask), through a function torch.fx can trace around
        conv = self.conv2
        x = _modulated_deform_conv(
            x, offset, mask, conv.weight, conv.stride, conv.padding, conv.dilation
        )
        x = self.act2(self.bn2(x))
        x = self.drop_path(self.bn3(self.conv3(x)))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)
