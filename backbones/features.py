"""The feature contract: which maps a backbone returns and how it describes them.

Feature *levels* are numbered as timm numbers them: level 0 is the stem output
(stride 2) and levels 1..4 are the residual stages ``layer1``..``layer4``
(strides 4, 8, 16, 32). A backbone returns the levels named by ``out_indices``,
in network order, and describes them with a :class:`FeatureInfo`.

This module only describes features; it builds no network.
"""

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

__all__ = ["FeatureInfo", "FeatureLevel", "check_out_indices", "resolve_out_indices"]


@dataclass(frozen=True)
class FeatureLevel:
    """One feature level of a network.

    Attributes:
        index: the level number (0 = stem, 1..4 = layer1..layer4 for ResNets).
        num_chs: channels of the feature map.
        reduction: the feature map's stride relative to the input image.
        module: name of the module whose output this is.
    """

    index: int
    num_chs: int
    reduction: int
    module: str


class FeatureInfo:
    """Channels, strides and module names of the feature maps a backbone returns.

    The accessors match timm's ``FeatureInfo`` (``channels()``, ``reduction()``,
    ``module_name()``, ``get()``, ``get_dicts()``), so code written for
    ``timm.create_model(..., features_only=True)`` works unchanged.

    One deliberate difference: ``len()``, iteration and ``[i]`` range over the
    features that ``forward`` returns, so ``len(feature_info) == len(outputs)``
    and ``feature_info[i]`` describes ``outputs[i]``. (timm ranges over every
    level whatever ``out_indices`` says.) An integer ``idx`` passed to the
    accessors is a *level* number, as in timm.

    Args:
        levels: every feature level of the network, in network order.
        out_indices: the level numbers the backbone returns, already resolved.

    Example:
        >>> info = FeatureInfo(
        ...     [FeatureLevel(0, 64, 2, "act1"), FeatureLevel(1, 256, 4, "layer1")], (1,)
        ... )
        >>> info.channels(), info.reduction(), info.module_name(), len(info)
        ([256], [4], ['layer1'], 1)
    """

    def __init__(self, levels: Sequence[FeatureLevel], out_indices: Sequence[int]) -> None:
        self.levels: tuple[FeatureLevel, ...] = tuple(levels)
        self.out_indices: tuple[int, ...] = resolve_out_indices(out_indices, len(self.levels))

    # -- timm-compatible accessors -------------------------------------------------
    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """Value of ``key`` ("num_chs", "reduction", "module" or "index").

        Args:
            key: the field to read.
            idx: ``None`` for every returned feature, a level number, or a
                sequence of level numbers.

        Returns:
            A list of values, or one value when ``idx`` is an int.

        Raises:
            KeyError: ``key`` is not a field.
            IndexError: a level number is out of range.
        """
        if idx is None:
            return [self._field(self.levels[i], key) for i in self.out_indices]
        if isinstance(idx, int):
            return self._field(self.levels[idx], key)
        return [self._field(self.levels[i], key) for i in idx]

    def get_dicts(
        self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None
    ) -> Any:
        """The description of features as dicts, as timm's ``get_dicts`` returns them."""
        if idx is None:
            return [self._dict(self.levels[i], keys) for i in self.out_indices]
        if isinstance(idx, int):
            return self._dict(self.levels[idx], keys)
        return [self._dict(self.levels[i], keys) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        """Channels of the returned features (or of the levels in ``idx``)."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        """Strides of the returned features (or of the levels in ``idx``)."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        """Module names of the returned features (or of the levels in ``idx``)."""
        return self.get("module", idx)

    def from_other(self, out_indices: Sequence[int]) -> "FeatureInfo":
        """The same network's description with other ``out_indices``."""
        return FeatureInfo(self.levels, out_indices)

    # -- sequence of returned features ----------------------------------------------
    def __len__(self) -> int:
        return len(self.out_indices)

    @overload
    def __getitem__(self, position: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, position: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, position: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(position, slice):
            return [asdict(self.levels[i]) for i in self.out_indices[position]]
        return asdict(self.levels[self.out_indices[position]])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (asdict(self.levels[i]) for i in self.out_indices)

    def __repr__(self) -> str:
        rows = ", ".join(
            f"{lv.module}(index={lv.index}, num_chs={lv.num_chs}, reduction={lv.reduction})"
            for lv in (self.levels[i] for i in self.out_indices)
        )
        return f"FeatureInfo([{rows}])"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureInfo):
            return NotImplemented
        return self.levels == other.levels and self.out_indices == other.out_indices

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container, like list

    @staticmethod
    def _field(level: FeatureLevel, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(f"unknown feature field {key!r}; accepted: {', '.join(_FIELDS)}")
        return getattr(level, key)

    @staticmethod
    def _dict(level: FeatureLevel, keys: Sequence[str] | None) -> dict[str, Any]:
        if keys is None:
            return asdict(level)
        return {k: FeatureInfo._field(level, k) for k in keys}


_FIELDS = ("num_chs", "reduction", "module", "index")


def check_out_indices(out_indices: object) -> tuple[int, ...]:
    """``out_indices`` as a tuple, if it is a non-empty sequence of ints (any range).

    Raises:
        TypeError: not a sequence of ints.
        ValueError: empty.
    """
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence):
        raise TypeError(
            f"out_indices must be a sequence of ints such as (1, 2, 3, 4), got {out_indices!r}"
        )
    if len(out_indices) == 0:
        raise ValueError("out_indices is empty; give at least one level, e.g. (1, 2, 3, 4)")
    for idx in out_indices:
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TypeError(f"out_indices must hold ints, got {idx!r} in {tuple(out_indices)!r}")
    return tuple(out_indices)


def resolve_out_indices(out_indices: Sequence[int], num_levels: int) -> tuple[int, ...]:
    """Validate ``out_indices`` and turn negative indices into level numbers.

    Args:
        out_indices: level numbers; negative ones count from the deepest level.
        num_levels: how many levels the network has.

    Returns:
        The level numbers, non-negative, in the order given.

    Raises:
        TypeError: ``out_indices`` is not a sequence of ints.
        ValueError: it is empty, or an index is out of range, repeated, or not
            in network order.

    Example:
        >>> resolve_out_indices((-2, -1), 5)
        (3, 4)
    """
    out_indices = check_out_indices(out_indices)
    lo, hi = -num_levels, num_levels - 1
    resolved: list[int] = []
    for idx in out_indices:
        if not lo <= idx <= hi:
            raise ValueError(
                f"out_indices entry {idx} is out of range: this network has levels "
                f"0..{hi} (or {lo}..-1 counting from the end)"
            )
        level = idx % num_levels
        if level in resolved:
            raise ValueError(
                f"out_indices entry {idx} repeats level {level} in {tuple(out_indices)!r}"
            )
        resolved.append(level)
    if resolved != sorted(resolved):
        raise ValueError(
            f"out_indices {tuple(out_indices)!r} must be in network order (shallow to deep), "
            f"e.g. {tuple(sorted(resolved))!r}"
        )
    return tuple(resolved)
