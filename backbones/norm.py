"""Normalization layers by name, for the ``norm_layer`` option.

Every entry is a callable mapping a channel count to a module. The modules come
from torch and torchvision; this module only names them and checks the choice.
"""

from collections.abc import Callable
from functools import partial

from torch import nn

from backbones.errors import UnknownNameError

__all__ = ["NORM_LAYERS", "NormLayer", "resolve_norm_layer"]

NormLayer = Callable[[int], nn.Module]
"""Builds a normalization module for a given number of channels."""

GROUPNORM_GROUPS = 32


def frozen_batchnorm(num_features: int) -> nn.Module:
    """torchvision's ``FrozenBatchNorm2d`` (imported on first use: torchvision's ops
    import costs seconds that listing or a ResNet with BatchNorm need not pay)."""
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNorm2d(num_features)


NORM_LAYERS: dict[str, NormLayer] = {
    "batchnorm": nn.BatchNorm2d,
    "frozen_batchnorm": frozen_batchnorm,
    "syncbatchnorm": nn.SyncBatchNorm,
    "groupnorm": partial(nn.GroupNorm, GROUPNORM_GROUPS),
}


def resolve_norm_layer(norm_layer: str | NormLayer) -> NormLayer:
    """The norm-layer factory for a name, or the callable, checked.

    Args:
        norm_layer: one of ``NORM_LAYERS`` ("batchnorm", "frozen_batchnorm",
            "syncbatchnorm", "groupnorm": 32 groups), or a callable taking a
            channel count.

    Returns:
        A callable mapping a channel count to a normalization module. A callable
        you pass is wrapped so that each call checks it returned an ``nn.Module``.

    Raises:
        UnknownNameError: an unknown name (a ValueError); the message suggests
            close matches and lists the accepted ones.
        TypeError: neither a string nor a callable; or, when the result is called,
            the callable returned no ``nn.Module`` or does not take a channel count.

    Example:
        >>> resolve_norm_layer("groupnorm")(64)
        GroupNorm(32, 64, eps=1e-05, affine=True)
    """
    if isinstance(norm_layer, str):
        try:
            return NORM_LAYERS[norm_layer]
        except KeyError:
            raise UnknownNameError("norm_layer", norm_layer, list(NORM_LAYERS)) from None
    if isinstance(norm_layer, nn.Module):  # callable too, but on tensors, not channel counts
        raise TypeError(
            f"norm_layer must build one norm per layer from a channel count, e.g. "
            f"nn.BatchNorm2d or lambda c: nn.GroupNorm(16, c), not a module already built "
            f"({norm_layer!r}); or a name: {', '.join(NORM_LAYERS)}"
        )
    if callable(norm_layer):
        return _checked_norm_layer(norm_layer)
    raise TypeError(
        f"norm_layer must be a name ({', '.join(NORM_LAYERS)}) or a callable, got {norm_layer!r}"
    )


def _checked_norm_layer(norm_layer: Callable[..., object]) -> NormLayer:
    """``norm_layer`` that refuses to hand the trunk anything but an ``nn.Module``.

    A callable returning something else (``lambda c: 5``) would otherwise fail later,
    inside ``nn.Module.__setattr__`` or a block's forward, without naming the option.
    """
    label = getattr(norm_layer, "__qualname__", None) or repr(norm_layer)

    def build(num_channels: int) -> nn.Module:
        try:
            module = norm_layer(num_channels)
        except TypeError as err:
            raise TypeError(
                f"norm_layer={label} must be callable as norm_layer(num_channels); "
                f"norm_layer({num_channels}) raised TypeError: {err}"
            ) from err
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"norm_layer={label} must return an nn.Module for a channel count; "
                f"norm_layer({num_channels}) returned {type(module).__name__} {module!r}"
            )
        return module

    return build
