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
    from backbones.variants import ResNetSpec

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "backbones"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def backbones_register_blocks() -> dict[str, type[nn.Module]]:
    """Residual blocks this plugin provides, by registry name.

    A block is an ``nn.Module`` class with a positive int class attribute
    ``expansion`` (its output has ``planes * expansion`` channels). The trunk
    builds it as::

        Block(inplanes, planes, stride=..., downsample=..., groups=..., base_width=...,
              dilation=..., first_dilation=..., norm_layer=..., drop_path=..., **block_kwargs)

    - ``downsample``: the shortcut projection the trunk built, or ``None`` (identity).
    - ``groups``, ``base_width``: the variant's grouped-conv settings (ResNeXt, Wide ResNet).
    - ``dilation``: the stage's dilation; ``first_dilation``: the dilation of the
      block's first spatial conv (the previous stage's in a stage's first block).
    - ``norm_layer``: a callable taking a channel count.
    - ``drop_path``: this block's stochastic-depth rate (a float).
    - ``block_kwargs``: whatever the user passed to ``create_backbone(block_kwargs=...)``.

    A block that cannot honour an argument (say ``groups != 1``) raises ValueError naming it.
    After its generic init pass the trunk calls the block's ``init_weights()`` method, if
    it has one, so a block's own special init (zero offsets, say) is kept.

    Returns:
        ``{name: block_class}``.
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
def backbones_register_backbones() -> "dict[str, Callable[..., nn.Module] | ResNetSpec]":
    """Backbones this plugin provides, by registry name.

    A value is either

    - a :class:`backbones.ResNetSpec`: a variant of the built-in trunk, whose
      ``block`` may name a block from any plugin. Its names resolve to this plugin's
      blocks first, then to the built-in ones, then to any other plugin's; write
      ``"<plugin>:<name>"`` to pin one; or
    - a factory honouring the feature contract: called with every option of
      :func:`backbones.create_backbone` as a keyword argument, it returns an
      ``nn.Module`` whose forward returns the feature maps its ``feature_info``
      (a :class:`backbones.FeatureInfo`) describes.

    Returns:
        ``{name: spec_or_factory}``.
    """
