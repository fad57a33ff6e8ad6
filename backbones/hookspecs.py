"""Hook specifications: what a plugin may contribute, and the contract of each contribution.

A plugin is a module (or object) with functions marked ``@backbones.hookimpl``
and named after the hooks below. Installed distributions announce their plugin
module in the ``backbones`` entry-point group::

    [project.entry-points.backbones]
    my_blocks = "my_blocks.plugin"

Each hook returns a dict of contributions, ``{name: object}``; it must not touch
the registries itself. Names must not contain ``":"``: ``"<plugin>:<name>"`` (the
entry point's name, ``builtin`` for the library's own) picks one provider of a name
that several plugins register. The built-in blocks, heads and backbones come in through
these same hooks.

This module only specifies; the plugin manager calls the hooks.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy
from torch import nn

if TYPE_CHECKING:
    from backbones.contract import BackboneEntry
    from backbones.layers import BlockVariant
    from backbones.namespace import Namespace
    from backbones.variants import ResNetSpec

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "backbones"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def backbones_register_blocks() -> "dict[str, type[nn.Module] | BlockVariant]":
    """Residual blocks this plugin provides, by registry name.

    A value is either a block class following the block contract, which
    :mod:`backbones.blocks` states (its constructor's arguments, ``expansion``,
    ``init_weights()``, the optional ``layers`` of insertion points), or a
    :class:`backbones.BlockVariant`: a base block with layers at its insertion
    points (an SE bottleneck is the bottleneck with an ``"se"`` layer at
    ``after_conv3``); its layer names resolve to this plugin's layers first.

    Returns:
        ``{name: block_class_or_variant}``.
    """


@hookspec
def backbones_register_layers() -> dict[str, Callable[..., nn.Module]]:
    """Layers this plugin provides for blocks' insertion points, by registry name.

    A layer factory is called as ``factory(channels, **kwargs)`` (the kwargs of the
    user's :class:`backbones.BlockLayer`) and returns a module whose output has its
    input's shape, as timm's attention layers do (``SEModule(channels)``).

    Returns:
        ``{name: layer_factory}``.
    """


@hookspec
def backbones_register_heads() -> dict[str, Callable[..., nn.Module]]:
    """Heads this plugin provides, by registry name.

    A head factory is called as ``factory(feature_info=<the backbone's FeatureInfo>,
    **head_kwargs)`` and returns an ``nn.Module`` whose forward takes the list of
    feature maps the backbone returns. It reads channels and strides from
    ``feature_info`` instead of guessing them.

    Returns:
        ``{name: head_factory}``.
    """


@hookspec
def backbones_register_backbones() -> (
    "dict[str, Callable[..., nn.Module] | ResNetSpec | BackboneEntry]"
):
    """Backbones this plugin provides, by registry name.

    A value is one of

    - a :class:`backbones.ResNetSpec`: a variant of the built-in trunk (the ``resnet``
      family, which honours every option), whose ``block`` may name a block from any
      plugin. Its names resolve to this plugin's blocks first, then to the built-in
      ones, then to any other plugin's; write ``"<plugin>:<name>"`` to pin one;
    - a factory returning a backbone (an ``nn.Module`` whose forward returns the feature
      maps its ``feature_info``, a :class:`backbones.FeatureInfo`, describes). It is
      called with the build options its signature names (every one if it takes
      ``**kwargs``); asking the backbone for another option raises. Its family is its
      registry name; or
    - a :class:`backbones.BackboneEntry` (see :func:`backbones.factory_entry`), to name
      the family, the options it honours and its published weights explicitly.

    What the factory returns is checked against the contract when it is built.

    Returns:
        ``{name: spec_factory_or_entry}``.
    """


@hookspec
def backbones_register_namespaces() -> "dict[str, Namespace]":
    """Model zoos this plugin provides, by namespace name (no ``"/"`` or ``":"`` in it).

    A :class:`backbones.Namespace` names its models without building them and resolves
    one name to a backbone entry on first use: ``"timm/convnext_tiny"`` asks the
    ``"timm"`` namespace for ``"convnext_tiny"``. The library's own ``timm`` and ``tv``
    namespaces come in through this hook too.

    Returns:
        ``{namespace: Namespace}``.
    """
