"""Normalization layers by name, for the ``norm_layer`` option.

Every entry is a callable mapping a channel count to a module. The modules come
from torch and torchvision; this module only names them and checks the choice.
"""

from collections.abc import Callable
from functools import partial

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from backbones.registry import UnknownNameError

__all__ = ["NORM_LAYERS", "NormLayer", "resolve_norm_layer"]

NormLayer = Callable[[int], nn.Module]
"""Builds a normalization module for a given number of channels."""

GROUPNORM_GROUPS = 32

NORM_LAYERS: dict[str, NormLayer] = {
    "batchnorm": nn.BatchNorm2d,
    "frozen_batchnorm": FrozenBatchNorm2d,
    "syncbatchnorm": nn.SyncBatchNorm,
    "groupnorm": partial(nn.GroupNorm, GROUPNORM_GROUPS),
}


def resolve_norm_layer(norm_layer: str | NormLayer) -> NormLayer:
    """The norm-layer factory for a name, or the callable itself.

    Args:
        norm_layer: one of ``NORM_LAYERS`` ("batchnorm", "frozen_batchnorm",
            "syncbatchnorm", "groupnorm": 32 groups), or a callable taking a
            channel count.

    Returns:
        A callable mapping a channel count to a normalization module.

    Raises:
        UnknownNameError: an unknown name (a ValueError); the message suggests
            close matches and lists the accepted ones.
        TypeError: neither a string nor a callable.

    Example:
        >>> resolve_norm_layer("groupnorm")(64)
        GroupNorm(32, 64, eps=1e-05, affine=True)
    """
    if isinstance(norm_layer, str):
        try:
            return NORM_LAYERS[norm_layer]
        except KeyError:
            raise UnknownNameError("norm_layer", norm_layer, list(NORM_LAYERS)) from None
    if callable(norm_layer):
        return norm_layer
    raise TypeError(
        f"norm_layer must be a name ({', '.join(NORM_LAYERS)}) or a callable, got {norm_layer!r}"
    )
