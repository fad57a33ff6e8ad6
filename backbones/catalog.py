"""The library's registries, filled by plugin discovery on first use, and their public API.

Four registries: backbones (:class:`~backbones.contract.BackboneEntry`), blocks (classes
or :class:`~backbones.layers.BlockVariant`), layers for the blocks' insertion points,
and heads. Whichever is used first runs discovery (:mod:`backbones.plugin_manager`)
once for all four; every thread waits for it. ``register_*`` adds entries in-process.

This module names and finds things; :mod:`backbones.factory` builds them.
"""

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn

from backbones.contract import BackboneEntry, factory_entry, source_of
from backbones.errors import NameConflictError, UnknownNameError
from backbones.layers import BlockVariant, LayerFactory, check_block_entry
from backbones.namespace import SEPARATOR, Namespace
from backbones.plugin_manager import PluginInfo, failed_plugins_note, get_plugin_manager
from backbones.registry import QUALIFIER, LoadOnce, Registry
from backbones.weights.config import PretrainedCfg

__all__ = [
    "BACKBONES",
    "BLOCKS",
    "HEADS",
    "LAYERS",
    "NAMESPACES",
    "BackboneFactory",
    "HeadFactory",
    "backbone_entry",
    "get_block",
    "get_layer",
    "list_backbones",
    "list_blocks",
    "list_heads",
    "list_layers",
    "list_namespaces",
    "list_plugins",
    "register_backbone",
    "register_block",
    "register_head",
    "register_layer",
]

F = TypeVar("F", bound=Callable[..., Any])
BackboneFactory = Callable[..., nn.Module]
"""Builds a backbone. Called with the build options it takes, as keywords."""

HeadFactory = Callable[..., nn.Module]
"""Builds a head. Called as ``factory(feature_info=..., **head_kwargs)``."""


def _discover() -> None:
    get_plugin_manager().load(
        {
            "layer": LAYERS,
            "block": BLOCKS,
            "head": HEADS,
            "backbone": BACKBONES,
            "namespace": NAMESPACES,
        }
    )


# One loader fills all four registries: whichever is used first triggers discovery,
# and every thread waits for all of it.
_DISCOVERY = LoadOnce(_discover)
BACKBONES: Registry[BackboneEntry] = Registry("backbone", _DISCOVERY, note=failed_plugins_note)
BLOCKS: Registry[type[nn.Module] | BlockVariant] = Registry(
    "block", _DISCOVERY, note=failed_plugins_note
)
LAYERS: Registry[LayerFactory] = Registry("layer", _DISCOVERY, note=failed_plugins_note)
HEADS: Registry[HeadFactory] = Registry("head", _DISCOVERY, note=failed_plugins_note)
NAMESPACES: Registry[Namespace] = Registry("namespace", _DISCOVERY, note=failed_plugins_note)


def backbone_entry(name: str) -> BackboneEntry:
    """The entry ``name`` refers to: a registered backbone, or ``"<namespace>/<model>"``.

    A name whose part before ``"/"`` is a namespace is resolved by that namespace
    (imported on first use); any other name is looked up among registered backbones.

    Raises:
        UnknownNameError: no such backbone (or model of the namespace); the message
            suggests close matches.
        NameConflictError: several plugins registered the name (or the namespace).
        ValueError: the namespace knows the model but it cannot return features.
    """
    prefix, sep, model = name.partition(SEPARATOR) if isinstance(name, str) else ("", "", "")
    if sep and prefix in NAMESPACES.names() and name not in BACKBONES.names():
        return NAMESPACES.get(prefix).resolve(model)
    try:
        return BACKBONES.get(name)
    except UnknownNameError as err:
        if not sep or err.note:
            raise
        known = ", ".join(f"{n}{SEPARATOR}" for n in NAMESPACES.names()) or "(none)"
        raise UnknownNameError(
            "backbone",
            name,
            err.available,
            f"{prefix!r} is not a namespace; namespaces: {known}",
        ) from None


def register_backbone(
    name: str,
    *,
    family: str | None = None,
    supports: Iterable[str] | None = None,
    weights: Iterable[PretrainedCfg] = (),
) -> Callable[[F], F]:
    """Decorator that registers a backbone factory under ``name``.

    The factory is called with the build options it takes (see
    :class:`~backbones.options.BackboneOptions`) as keyword arguments: the ones its
    signature names, or all of them if it takes ``**kwargs``. Asking the backbone for an
    option it does not take raises a ValueError naming the families that have it. It
    must return an ``nn.Module`` whose ``feature_info`` (a
    :class:`~backbones.features.FeatureInfo`) describes the feature maps its forward
    returns; that is checked each time it is built.

    Args:
        name: the registry name.
        family: the family's name in messages; ``name`` by default.
        supports: the build options it honours, if not those of its signature.
        weights: its published weights, default first (``pretrained=True`` or a tag).

    Returns:
        A decorator that registers and returns the factory unchanged.

    Raises:
        TypeError: ``name`` is not a non-empty string, or what is decorated is not
            callable.
        ValueError: ``name`` is already registered (the message names the existing
            entry), or ``supports`` names something that is not a build option.

    Example:
        >>> @register_backbone("my_resnet")  # doctest: +SKIP
        ... def my_resnet(out_indices=(1, 2, 3, 4), frozen_stages=-1):
        ...     return create_backbone("resnet18", out_indices=out_indices,
        ...                            frozen_stages=frozen_stages)
    """
    _check_name("backbone", "register_backbone", name)

    def decorator(factory: F) -> F:
        _check_callable("backbone", name, factory, "an nn.Module with feature_info")
        entry = factory_entry(factory, family=family or name, supports=supports, weights=weights)
        BACKBONES.add(name, entry, source=source_of(factory))
        return factory

    return decorator


def register_block(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a residual block under ``name``.

    A block follows the block contract stated in :mod:`backbones.blocks`. (To register
    a :class:`~backbones.layers.BlockVariant`, return it from a plugin's
    ``backbones_register_blocks`` hook.)

    Raises:
        TypeError: ``name`` is not a non-empty string, or the object is not an
            ``nn.Module`` subclass with an int ``expansion``.
        ValueError: ``name`` is already registered.

    Example:
        >>> @register_block("my_block")  # doctest: +SKIP
        ... class MyBlock(nn.Module):
        ...     expansion = 1
    """
    _check_name("block", "register_block", name)

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        check_block_entry(name, cls)
        BLOCKS.add(name, cls, source=source_of(cls))
        return cls

    return decorator


def register_layer(name: str) -> Callable[[F], F]:
    """Decorator that registers a layer for the blocks' insertion points under ``name``.

    The factory is called as ``factory(channels, **kwargs)`` and returns a module that
    keeps its input's shape.

    Raises:
        TypeError: ``name`` is not a non-empty string, or what is decorated is not callable.
        ValueError: ``name`` is already registered.

    Example:
        >>> @register_layer("scale")  # doctest: +SKIP
        ... class Scale(nn.Module):
        ...     def __init__(self, channels): ...
    """
    _check_name("layer", "register_layer", name)

    def decorator(factory: F) -> F:
        _check_callable("layer", name, factory, "a layer nn.Module for a channel count")
        LAYERS.add(name, factory, source=source_of(factory))
        return factory

    return decorator


def register_head(name: str) -> Callable[[F], F]:
    """Decorator that registers a head factory under ``name``.

    The factory is called as ``factory(feature_info=<FeatureInfo>, **head_kwargs)``
    and returns an ``nn.Module`` whose forward takes the backbone's list of features.

    Raises:
        TypeError: ``name`` is not a non-empty string, or what is decorated is not
            callable.
        ValueError: ``name`` is already registered.

    Example:
        >>> @register_head("my_head")  # doctest: +SKIP
        ... def my_head(*, feature_info, num_classes=10):
        ...     return MyHead(feature_info.channels()[-1], num_classes)
    """
    _check_name("head", "register_head", name)

    def decorator(factory: F) -> F:
        _check_callable("head", name, factory, "a head nn.Module")
        HEADS.add(name, factory, source=source_of(factory))
        return factory

    return decorator


def _check_name(kind: str, decorator: str, name: object) -> None:
    # Checked when the decorator is made, not when it is applied: a bare
    # `@register_backbone` (no name) would otherwise silently replace the function.
    if isinstance(name, str) and name:
        return
    hint = (
        f"; give the name first: @{decorator}('my_name')"
        if callable(name) and not isinstance(name, str)
        else ""
    )
    raise TypeError(f"a {kind} name must be a non-empty string, got {name!r}{hint}")


def _check_callable(kind: str, name: str, factory: object, returns: str) -> None:
    if not callable(factory):
        raise TypeError(
            f"{kind} {name!r} must be registered with a factory (a callable returning "
            f"{returns}), got {type(factory).__name__} {factory!r}"
        )


def get_block(name: str) -> type[nn.Module] | BlockVariant:
    """The block registered as ``name``: a class, or a :class:`~backbones.layers.BlockVariant`.

    Raises:
        UnknownNameError: no such block; the message suggests close matches.

    Example:
        >>> get_block("bottleneck").expansion
        4
    """
    return BLOCKS.get(name)


def get_layer(name: str) -> LayerFactory:
    """The layer factory registered as ``name``.

    Raises:
        UnknownNameError: no such layer; the message suggests close matches.
    """
    return LAYERS.get(name)


def list_backbones(pattern: str = "*") -> list[str]:
    """Sorted names of backbones matching an fnmatch ``pattern``.

    A pattern with ``"/"`` enumerates the namespaces its first part matches, without
    building anything (``"timm/convnext*"``); other patterns list registered backbones
    only, as ``list_namespaces()`` names the zoos.

    Example:
        >>> list_backbones("resnet1*")
        ['resnet101', 'resnet101d', 'resnet152', 'resnet18']
    """
    names = BACKBONES.names(pattern)
    prefix_pattern, sep, rest = pattern.partition(SEPARATOR)
    if sep:
        for prefix in NAMESPACES.names(prefix_pattern):
            names += _namespace_names(prefix, rest)
    return sorted(set(names))


def _namespace_names(prefix: str, pattern: str) -> list[str]:
    try:
        namespace = NAMESPACES.get(prefix)
    except NameConflictError:
        return []
    return [f"{prefix}{SEPARATOR}{n}" for n in fnmatch.filter(namespace.names(), pattern)]


def list_namespaces() -> dict[str, str]:
    """The namespaces (``"timm"``, ``"tv"``, a plugin's) and their one-line docs."""
    return {name: NAMESPACES.get(name).doc for name in NAMESPACES.names() if QUALIFIER not in name}


def list_blocks(pattern: str = "*") -> list[str]:
    """Sorted names of registered blocks matching an fnmatch ``pattern``.

    Example:
        >>> list_blocks("*bottleneck")[:1]  # installed plugins may add more
        ['bottleneck']
    """
    return BLOCKS.names(pattern)


def list_layers(pattern: str = "*") -> list[str]:
    """Sorted names of registered layers (for ``block_layers``) matching ``pattern``."""
    return LAYERS.names(pattern)


def list_heads(pattern: str = "*") -> list[str]:
    """Sorted names of registered heads matching an fnmatch ``pattern``.

    Example:
        >>> "classification" in list_heads()
        True
    """
    return HEADS.names(pattern)


def list_plugins() -> list[PluginInfo]:
    """Every plugin, with its distribution, what it registered, conflicts and failures.

    Example:
        >>> [p.name for p in list_plugins() if not p.failed][:1]
        ['builtin']
    """
    _DISCOVERY()
    return get_plugin_manager().plugins()


def families_supporting(option: str) -> list[str]:
    """The names of the families that honour build option ``option``: registered ones,
    then those the namespaces name."""
    families = sorted({e.obj.family for _, e in BACKBONES.entries() if option in e.obj.supports})
    for _, entry in NAMESPACES.entries():
        families += [f for f in entry.obj.families_supporting(option) if f not in families]
    return families
