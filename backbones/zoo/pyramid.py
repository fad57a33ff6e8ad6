"""The simple feature pyramid of ViTDet: one stride-16 map becomes strides 4, 8, 16 and 32.

Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection" (2022),
build a detector's pyramid from the last block of a plain ViT alone: two stride-2
transposed convolutions (with a norm and GELU between them) up to stride 4, one up to
stride 8, the map itself at 16, and a 2x2 max-pool down to 32. Channels are the ViT's
width divided by 4, 2, 1 and 1. The necks and heads that follow (the ``fpn`` head, a
detector's FPN) project them to their own width, as ViTDet's FPN does.
"""

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PYRAMIDS", "SimpleFeaturePyramid"]

PYRAMIDS = ("simple",)
"""Accepted values of the ``pyramid`` option."""

STRIDES = (4, 8, 16, 32)
"""The pyramid's levels, as multiples of the ViT's stride 16: x4, x2, x1, /2."""


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        )
        return x.permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """Strides 4, 8, 16 and 32 from one map of ``channels`` channels at ``stride``.

    A map at another stride than 16 (a patch-14 ViT such as DINOv2) is first resampled
    to the stride-16 grid, so the levels are at strides 4, 8, 16 and 32 of the input.

    Args:
        channels: the ViT's width.
        out_indices: which of the four levels (0: stride 4 .. 3: stride 32) to return;
            only those are built, so none has parameters that get no gradient.
        stride: the stride of the map it is given.

    Example:
        >>> import torch
        >>> neck = SimpleFeaturePyramid(192)
        >>> maps = neck([torch.zeros(1, 192, 8, 8)], (128, 128))
        >>> [tuple(m.shape[1:]) for m in maps]
        [(48, 32, 32), (96, 16, 16), (192, 8, 8), (192, 4, 4)]
    """

    def __init__(
        self, channels: int, out_indices: tuple[int, ...] = (0, 1, 2, 3), stride: int = 16
    ) -> None:
        super().__init__()
        self.stride = stride
        self.channels = [channels // 4, channels // 2, channels, channels]
        half = channels // 2
        makers = {
            0: lambda: nn.Sequential(
                nn.ConvTranspose2d(channels, half, 2, stride=2),
                _LayerNorm2d(half),
                nn.GELU(),
                nn.ConvTranspose2d(half, channels // 4, 2, stride=2),
            ),
            1: lambda: nn.ConvTranspose2d(channels, half, 2, stride=2),
            2: nn.Identity,
            3: lambda: nn.MaxPool2d(2, stride=2, ceil_mode=True),
        }
        self.levels = nn.ModuleDict({f"stride{STRIDES[i]}": makers[i]() for i in out_indices})

    def forward(self, maps: list[Tensor], size: tuple[int, int]) -> list[Tensor]:
        """The levels of ``maps[-1]`` for an input of ``size`` (height, width): each is
        ``ceil(size / stride)`` cells, whatever the ViT's patch."""
        x = maps[-1]
        if self.stride != 16:
            x = F.interpolate(x, size=_cells(size, 16), mode="bilinear", align_corners=False)
        out: list[Tensor] = []
        for key, level in self.levels.items():
            fmap = level(x)
            cells = _cells(size, int(key[len("stride") :]))
            if fmap.shape[-2] != cells[0] or fmap.shape[-1] != cells[1]:  # patch 14: 44 -> 42
                fmap = F.interpolate(fmap, size=cells, mode="bilinear", align_corners=False)
            out.append(fmap)
        return out


def _cells(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """ceil(size / stride) per side."""
    return (-(-int(size[0]) // stride), -(-int(size[1]) // stride))
