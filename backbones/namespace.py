"""Namespaces: whole model zoos named ``"<namespace>/<model>"``, resolved on first use.

A :class:`Namespace` is how a plugin contributes a family of backbones too large (or
too slow) to register one by one: timm's ~1,300 models are ``timm/<name>``,
torchvision's classifiers ``tv/<name>``. Nothing of the zoo is imported until a name of
it is used: listing enumerates names without building anything, and resolving a name
gives an ordinary :class:`~backbones.contract.BackboneEntry`, which the
``create_backbone`` pipeline builds and checks like any other.

Plugins return namespaces from the ``backbones_register_namespaces`` hook.

This module describes namespaces; the catalog looks names up in them.
"""

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from backbones.contract import BackboneEntry

__all__ = ["SEPARATOR", "Namespace", "close_matches"]

SEPARATOR = "/"
"""Separates a namespace from a model name: ``"timm/convnext_tiny"``."""


def close_matches(name: str, names: Iterable[str]) -> list[str]:
    """Up to three names of a namespace close to ``name``, for an unknown-name message."""
    return difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)


def _none(option: str) -> list[str]:
    return []


@dataclass(frozen=True)
class Namespace:
    """A zoo of backbones named ``"<namespace>/<model>"``.

    Attributes:
        names: returns the model names (without the namespace) that can return
            features; cheap: it must build nothing.
        resolve: returns the entry of one model name (without the namespace). For an
            unknown name it raises :class:`~backbones.errors.UnknownNameError`
            suggesting close matches; for a model that cannot return features, a
            ValueError saying so.
        doc: one line for listings ("timm's models with features_only").
        families_supporting: the families of this namespace that honour a build
            option, for the message of an option a model does not honour.

    Example:
        >>> ns = Namespace(names=lambda: ["tiny"], resolve=my_resolve)  # doctest: +SKIP
    """

    names: Callable[[], Iterable[str]]
    resolve: Callable[[str], BackboneEntry]
    doc: str = ""
    families_supporting: Callable[[str], list[str]] = field(default=_none)

    def __post_init__(self) -> None:
        for attr in ("names", "resolve", "families_supporting"):
            value = getattr(self, attr)
            if not callable(value):
                raise TypeError(
                    f"Namespace.{attr} must be a callable, got {type(value).__name__} {value!r}"
                )
