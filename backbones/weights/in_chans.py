"""Input-convolution adaptation: load 3-channel weights into a model with ``in_chans != 3``.

A strategy maps the pretrained first-conv weight ``(out, 3, kh, kw)`` to
``(out, in_chans, kh, kw)``. Built in:

* ``"repeat"``: timm's ``adapt_input_conv``: tile R, G, B, R, ... and scale by
  ``3 / in_chans`` (one channel: the sum of the three), so the response to a grey
  image keeps its magnitude;
* ``"mean"``: every channel gets the mean RGB filter, scaled by ``3 / in_chans``;
* ``"zeros"``: keep the RGB filters for the first three channels, zeros for the others,
  so the model starts out exactly as the RGB model and learns the extra channels;
* a channel map, a sequence with one entry per input channel: the index of the RGB
  channel it copies, or ``None`` for zeros; e.g. ``(0, 1, 2, 0)`` for RGB + NIR with
  NIR <- R.

Add your own with :func:`register_in_chans_strategy`.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from backbones.registry import Registry

__all__ = [
    "IN_CHANS_STRATEGIES",
    "InChansStrategy",
    "adapt_first_conv",
    "register_in_chans_strategy",
]

InChansStrategy = Callable[[Tensor, int], Tensor]
"""``strategy(weight (out, c, kh, kw), in_chans) -> weight (out, in_chans, kh, kw)``."""

IN_CHANS_STRATEGIES: Registry[InChansStrategy] = Registry("in_chans strategy")


def register_in_chans_strategy(name: str) -> Callable[[InChansStrategy], InChansStrategy]:
    """Register ``strategy(weight, in_chans) -> weight`` under ``name``.

    Example:
        >>> @register_in_chans_strategy("first")  # doctest: +SKIP
        ... def first(weight, in_chans):
        ...     return weight[:, :1].repeat(1, in_chans, 1, 1)
    """

    def decorator(strategy: InChansStrategy) -> InChansStrategy:
        IN_CHANS_STRATEGIES.add(name, strategy, source=f"{strategy.__module__}")
        return strategy

    return decorator


@register_in_chans_strategy("repeat")
def _repeat(weight: Tensor, in_chans: int) -> Tensor:
    from timm.models import adapt_input_conv  # here: importing timm is slow, `backbones` is not

    return adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])


@register_in_chans_strategy("mean")
def _mean(weight: Tensor, in_chans: int) -> Tensor:
    mean = weight.float().mean(dim=1, keepdim=True) * (weight.shape[1] / in_chans)
    return mean.repeat(1, in_chans, 1, 1).to(weight.dtype)


@register_in_chans_strategy("zeros")
def _zeros(weight: Tensor, in_chans: int) -> Tensor:
    if in_chans < weight.shape[1]:
        raise ValueError(
            f'in_chans_strategy="zeros" pads extra channels with zeros, so it needs '
            f"in_chans >= {weight.shape[1]}, got {in_chans}; use 'repeat', 'mean' or a "
            f"channel map"
        )
    out = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])
    out[:, : weight.shape[1]] = weight
    return out


def _channel_map(weight: Tensor, mapping: Sequence[int | None]) -> Tensor:
    out = weight.new_zeros(weight.shape[0], len(mapping), *weight.shape[2:])
    for i, source in enumerate(mapping):
        if source is not None:
            out[:, i] = weight[:, source]
    return out


def check_channel_map(mapping: Sequence[object], in_chans: int, base: int = 3) -> None:
    """Raise ValueError unless ``mapping`` has ``in_chans`` entries in ``0..base-1`` or None."""
    if len(mapping) != in_chans or not all(
        m is None or (isinstance(m, int) and not isinstance(m, bool) and 0 <= m < base)
        for m in mapping
    ):
        raise ValueError(
            f"channel map {tuple(mapping)!r} must have in_chans={in_chans} entries, each a "
            f"source channel 0..{base - 1} or None (zeros), e.g. (0, 1, 2, 0) for NIR <- R"
        )


def adapt_first_conv(
    weight: Tensor, in_chans: int, strategy: str | Sequence[int | None] = "repeat"
) -> Tensor:
    """Adapt a first-conv weight ``(out, c, kh, kw)`` to ``in_chans`` input channels.

    Args:
        weight: the pretrained weight.
        in_chans: the model's input channels.
        strategy: a registered strategy name, or a channel map (see the module doc).

    Raises:
        UnknownNameError: an unknown strategy name (with close matches).
        ValueError: a bad channel map, or a strategy that cannot give ``in_chans``.
    """
    if weight.ndim != 4:
        raise ValueError(
            f"expected a conv weight (out, in, kh, kw), got shape {tuple(weight.shape)}"
        )
    if isinstance(strategy, str):
        out = IN_CHANS_STRATEGIES.get(strategy)(weight, in_chans)
    else:
        check_channel_map(strategy, in_chans, weight.shape[1])
        out = _channel_map(weight, strategy)
    expected = (weight.shape[0], in_chans, *weight.shape[2:])
    if tuple(out.shape) != expected:
        raise ValueError(
            f"in_chans strategy {strategy!r} returned shape {tuple(out.shape)}, expected {expected}"
        )
    with torch.no_grad():
        return out.contiguous()
