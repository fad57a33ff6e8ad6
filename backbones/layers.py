"""Layers inserted into residual blocks at named insertion points, as data.

A block with insertion points (the built-in ``basic`` and ``bottleneck`` have
``after_conv1``, ``after_conv2`` and, for the bottleneck, ``after_conv3``, as mmdet's
ResNet plugins have) runs the layers placed at a point right after that point's conv,
norm (and activation, except at the last conv, where the layer comes before the
residual add, as timm's ``attn_layer`` does).

* :class:`BlockLayer`: what a user or a variant asks for: a registered layer name (or
  a factory), where, in which stages, under which module name, with which arguments.
* :class:`InsertedLayer`: the same, resolved to a factory: what a block receives.
* :class:`BlockVariant`: a registered block that is a base block plus layers (an SE
  bottleneck is the bottleneck with an SE layer at ``after_conv3``).

A layer factory is called as ``factory(channels, **kwargs)`` and returns a module that
keeps its input's shape, as timm's attention layers (``SEModule(channels)``) do.

This module only describes layers; blocks build them and the factory resolves names.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

__all__ = [
    "LAST",
    "NUM_STAGES",
    "POSITIONS",
    "BlockLayer",
    "BlockVariant",
    "InsertedLayer",
    "LayerFactory",
    "check_block_entry",
]

LayerFactory = Callable[..., nn.Module]
"""Builds a layer for a channel count: ``factory(channels, **kwargs) -> nn.Module``."""

NUM_STAGES = 4
ALL_STAGES = (1, 2, 3, 4)
POSITIONS = ("after_conv1", "after_conv2", "after_conv3")
"""Every insertion point a built-in block may have (the basic block lacks ``after_conv3``)."""

LAST = "last"
"""A block's last insertion point, after its last conv and norm, before the residual add:
``after_conv3`` in a bottleneck, ``after_conv2`` in a basic block (where timm puts
``attn_layer``)."""


def _frozen_mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{where} must be a dict of keyword arguments, got {value!r}")
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class BlockLayer:
    """A layer to insert into blocks: what ``create_backbone(block_layers=...)`` takes.

    Attributes:
        layer: a registered layer name (see ``list_layers()``), or a factory called as
            ``factory(channels, **kwargs)``.
        position: the insertion point: ``"after_conv1"``, ``"after_conv2"``,
            ``"after_conv3"``, or ``"last"`` (the default: each block's last point,
            before the residual add, where timm puts attention).
        stages: the stages (1..4) whose blocks get the layer; all four by default.
        name: the module name in each block (``"se"`` gives timm's ``layer1.0.se.*``
            keys); the layer's name by default.
        kwargs: keyword arguments for the factory.

    Raises:
        TypeError, ValueError: a field of the wrong type or out of range; the message
            names the field and what is accepted.

    Example:
        >>> BlockLayer("gc", stages=(2, 3, 4)).position
        'last'
    """

    layer: str | LayerFactory
    position: str = LAST
    stages: tuple[int, ...] = ALL_STAGES
    name: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if isinstance(self.layer, str):
            if not self.layer:
                raise ValueError("BlockLayer.layer must be a registered layer name, got ''")
        elif not callable(self.layer) or isinstance(self.layer, nn.Module):
            raise TypeError(
                f"BlockLayer.layer must be a registered layer name or a factory taking a "
                f"channel count (such as timm.layers.SEModule), got {self.layer!r}"
            )
        if self.position not in (*POSITIONS, LAST):
            raise ValueError(
                f"BlockLayer.position={self.position!r} is not an insertion point; "
                f"accepted: {', '.join(POSITIONS)}, {LAST}"
            )
        stages = self.stages
        if isinstance(stages, int) and not isinstance(stages, bool):
            stages = (stages,)
        if (
            not isinstance(stages, Sequence)
            or isinstance(stages, str)
            or not stages
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in stages)
            or not set(stages) <= set(ALL_STAGES)
            or len(set(stages)) != len(stages)
        ):
            raise ValueError(
                f"BlockLayer.stages={self.stages!r} is not accepted; give distinct stage "
                f"numbers from 1..{NUM_STAGES}, e.g. (2, 3, 4)"
            )
        object.__setattr__(self, "stages", tuple(sorted(stages)))
        if self.name is not None and (
            not isinstance(self.name, str) or not self.name.isidentifier()
        ):
            raise ValueError(
                f"BlockLayer.name={self.name!r} must be a Python identifier (a module name "
                f"such as 'se'), or None for the layer's name"
            )
        if self.name is None and not isinstance(self.layer, str):
            raise ValueError(
                f"BlockLayer with a factory ({self.layer!r}) needs a module name: "
                f"BlockLayer(factory, name='attn')"
            )
        object.__setattr__(self, "kwargs", _frozen_mapping(self.kwargs, "BlockLayer.kwargs"))

    @property
    def module_name(self) -> str:
        """The name of the module this layer becomes in each block."""
        return self.name or str(self.layer)

    @classmethod
    def coerce(cls, value: object, where: str = "block_layers") -> "BlockLayer":
        """A BlockLayer from itself, a dict of its fields, or a bare layer name.

        Raises:
            TypeError: anything else, or a dict with unknown keys.
        """
        if isinstance(value, BlockLayer):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"layer", "position", "stages", "name", "kwargs"})
            if unknown or "layer" not in value:
                raise TypeError(
                    f"{where} entry {dict(value)!r}: a dict needs 'layer' and may have "
                    f"'position', 'stages', 'name' and 'kwargs'"
                    + (f"; unknown keys {unknown}" if unknown else "")
                )
            return cls(**value)
        raise TypeError(
            f"{where} entries must be BlockLayer(...), a dict of its fields or a layer name, "
            f"got {value!r}"
        )

    def to_config(self) -> dict[str, Any]:
        """The fields as JSON data (for ``backbone_config``); a factory is not JSON data."""
        return {
            "layer": self.layer,
            "position": self.position,
            "stages": list(self.stages),
            "name": self.name,
            "kwargs": dict(self.kwargs),
        }


@dataclass(frozen=True)
class InsertedLayer:
    """A layer resolved for one block: a module name, a position and a factory.

    Attributes:
        name: the module name in the block.
        position: the insertion point.
        build: called as ``build(channels)``; the layer's kwargs are bound already.
        label: how messages name it (the registered name, or the factory).
    """

    name: str
    position: str
    build: Callable[[int], nn.Module]
    label: str = ""


@dataclass(frozen=True)
class BlockVariant:
    """A registered block made of a base block class and layers at its insertion points.

    ``create_backbone(block="se_bottleneck")`` builds ``base`` with these layers in every
    stage the option names; layer names resolve to the registering plugin's layers first.

    Attributes:
        base: a block class with insertion points (``backbones.blocks.Bottleneck``).
        layers: the layers; their ``stages`` are ignored (the variant is per stage already).

    Example:
        >>> from backbones.blocks import Bottleneck  # doctest: +SKIP
        >>> BlockVariant(Bottleneck, (BlockLayer("se", name="se"),))  # doctest: +SKIP
    """

    base: type[nn.Module]
    layers: tuple[BlockLayer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "layers", tuple(BlockLayer.coerce(v, "BlockVariant.layers") for v in self.layers)
        )

    @property
    def expansion(self) -> int:
        """The base block's expansion: a variant has the base's output channels."""
        expansion: int = getattr(self.base, "expansion")  # noqa: B009  # checked at registration
        return expansion


def check_block_entry(name: str, obj: object) -> None:
    """Refuse a block registration that is neither a block class nor a :class:`BlockVariant`.

    Raises:
        TypeError: not an ``nn.Module`` subclass with a positive int ``expansion``, nor
            a variant of one; or a variant's base without insertion points.
    """
    base = obj.base if isinstance(obj, BlockVariant) else obj
    if not (isinstance(base, type) and issubclass(base, nn.Module)):
        raise TypeError(
            f"block {name!r} must be an nn.Module subclass, got {obj!r} (or a BlockVariant of one)"
        )
    expansion = getattr(base, "expansion", None)
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
        raise TypeError(
            f"block {name!r} ({base.__qualname__}) needs a positive int class attribute "
            f"'expansion', got {expansion!r}"
        )
    if isinstance(obj, BlockVariant) and not getattr(base, "positions", ()):
        raise TypeError(
            f"block {name!r}: its base {base.__qualname__} has no insertion points "
            f"('positions'), so it cannot take layers"
        )
