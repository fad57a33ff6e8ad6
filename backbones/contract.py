"""The backbone contract, checked where a factory returns, and the registry entry of a backbone.

The contract (as detectron2's ``Backbone.output_shape()``, in timm's terms): a backbone
is an ``nn.Module`` whose ``feature_info`` (a :class:`~backbones.features.FeatureInfo`)
describes the maps its forward returns: one NCHW tensor per level, in order, with the
level's channels and stride; a list, or a dict keyed by module name with
``return_dict=True``. :func:`check_backbone` verifies a freshly built backbone against
it, running it once on a small input, so a broken factory is named where it returns
rather than failing later inside a head.

A :class:`BackboneEntry` is what the backbone registry holds: how to build, the family,
the options that family honours, and the published weights (as data, beside the entry).

This module builds no network; it checks them and describes registrations.
"""

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from backbones.errors import BackboneContractError
from backbones.features import FeatureInfo
from backbones.options import BUILD, BackboneOptions, option_names
from backbones.weights.config import PretrainedCfg

__all__ = [
    "BackboneEntry",
    "check_backbone",
    "factory_entry",
    "feature_info_of",
    "source_of",
]

BackboneBuild = Callable[[BackboneOptions], nn.Module]
"""Builds a backbone from validated options."""


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone.

    Attributes:
        build: makes the network from validated :class:`~backbones.options.BackboneOptions`.
        family: the family's name, for messages ("resnet", or the registered name).
        supports: the build options the family honours; another build option set to
            anything but its default raises, naming the families that have it.
        weights: published weights, default first (``pretrained=True``, or a tag).
        source: how messages name the code behind it.
        loads_weights: the build applies the weights options itself (a zoo whose
            library has its own checkpoint filters) and sets ``pretrained_cfg``; the
            pipeline then skips its own loading.
    """

    build: BackboneBuild
    family: str
    supports: frozenset[str]
    weights: tuple[PretrainedCfg, ...] = ()
    source: str = ""
    loads_weights: bool = False


def source_of(obj: object) -> str:
    """``module.qualname`` of a function or class, for messages."""
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def factory_supports(factory: Callable[..., Any]) -> frozenset[str]:
    """The build options a keyword factory takes: every one if it takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume it takes them
        return frozenset(option_names(BUILD))
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset(option_names(BUILD))
    taken = {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    return frozenset(taken & set(option_names(BUILD)))


def factory_entry(
    factory: Callable[..., nn.Module],
    *,
    family: str,
    supports: Iterable[str] | None = None,
    weights: Iterable[PretrainedCfg] = (),
) -> BackboneEntry:
    """The entry of a factory called with the build options it supports, as keywords.

    Args:
        factory: returns a backbone; called with the supported build options only, so a
            factory written before an option existed keeps working.
        family: its family's name.
        supports: the build options it honours; read from its signature when None (all
            of them if it takes ``**kwargs``).
        weights: its published weights, default first.

    Raises:
        TypeError: ``factory`` is not callable, or ``weights`` holds something other
            than ``PretrainedCfg``.
        ValueError: ``supports`` names something that is not a build option.
    """
    if not callable(factory):
        raise TypeError(
            f"a backbone must be registered with a factory (a callable returning an "
            f"nn.Module with feature_info), got {type(factory).__name__} {factory!r}"
        )
    known = option_names(BUILD)
    chosen = factory_supports(factory) if supports is None else frozenset(supports)
    unknown = sorted(chosen - set(known))
    if unknown:
        raise ValueError(
            f"supports names {unknown}, which are not build options; accepted: {', '.join(known)}"
        )
    rows = tuple(weights)
    if not all(isinstance(w, PretrainedCfg) for w in rows):
        raise TypeError(f"weights must be PretrainedCfg rows, got {rows!r}")

    def build(options: BackboneOptions) -> nn.Module:
        kwargs = {k: v for k, v in options.build_options().items() if k in chosen}
        if kwargs.get("out_indices", ()) is None:  # the factory's own default levels
            del kwargs["out_indices"]
        return factory(**kwargs)

    return BackboneEntry(build, family, chosen, rows, source_of(factory))


# -- the checked contract ----------------------------------------------------------------
def feature_info_of(backbone: object, needed_by: str) -> FeatureInfo:
    """``backbone.feature_info``, for code that takes an already built backbone.

    The one "is this a backbone?" test for consumers (create_model, the adapters,
    optimize_for_inference); the full check, forward included, runs where a factory
    returns (:func:`check_backbone`).

    Raises:
        TypeError: not an ``nn.Module`` with a ``FeatureInfo``; the message names
            ``needed_by`` and what was given.
    """
    info = getattr(backbone, "feature_info", None)
    if isinstance(backbone, nn.Module) and isinstance(info, FeatureInfo):
        return info
    raise TypeError(
        f"{needed_by} needs a backbone: an nn.Module whose feature_info is a FeatureInfo "
        f"(what create_backbone returns), got {type(backbone).__name__}"
    )


def check_backbone(
    name: str, entry: BackboneEntry, model: object, options: BackboneOptions
) -> None:
    """Check a freshly built backbone against the contract, naming its factory on failure.

    A backbone whose ``feature_info_measured`` is True made its ``feature_info`` from its
    own forward when it was built (a zoo extractor without a neck) and is not run again.
    Otherwise the forward is run once, in eval mode and without gradients, on a zero image twice
    the deepest level's stride (2x2 maps there), or of the ``probe_input_size``
    (height, width) the backbone declares when it takes only some sizes; every module's
    training flag is restored afterwards, so nothing about the model changes.

    Raises:
        BackboneContractError: (a TypeError) no ``nn.Module``, no ``FeatureInfo``, or a
            forward whose outputs differ from what ``feature_info`` describes (count,
            type, keys, channels or size).
    """
    where = f"backbone {name!r}: its factory {entry.source}"
    contract = (
        "a factory must return an nn.Module whose feature_info (a backbones.features."
        "FeatureInfo) describes the feature maps its forward returns"
    )
    info = getattr(model, "feature_info", None)
    if not isinstance(model, nn.Module):
        problem = f"returned {type(model).__name__} {model!r}, not an nn.Module"
    elif not hasattr(model, "feature_info"):
        problem = f"returned a {type(model).__name__} without a feature_info attribute"
    elif not isinstance(info, FeatureInfo):
        problem = (
            f"returned a {type(model).__name__} whose feature_info is a "
            f"{type(info).__name__}, not a FeatureInfo"
        )
    elif getattr(model, "feature_info_measured", False) is True:
        problem = ""  # read off a forward when it was built (a zoo extractor): no second run
    else:
        problem = _forward_problem(model, info, options)
    if problem:
        raise BackboneContractError(f"{where} {problem}; {contract}")


def _forward_problem(model: nn.Module, info: FeatureInfo, options: BackboneOptions) -> str:
    if len(info) == 0:
        return "describes no feature level (feature_info is empty)"
    # 2x2 at the deepest level: GroupNorm needs more than one value per group, even in eval.
    # A network that takes only some sizes (a ViT of fixed size) names one it takes.
    height, width = getattr(model, "probe_input_size", None) or (2 * max(info.reduction()),) * 2
    x = torch.zeros(1, options.in_chans, height, width)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # the factory's own network: report, whatever it raised
        return (
            f"returned a backbone whose forward fails on a zero image of shape "
            f"{tuple(x.shape)}: {type(err).__name__}: {err}"
        )
    finally:
        for m, mode in modes:
            m.training = mode
    names = info.module_name()
    if isinstance(out, dict):
        if list(out) != names:
            return f"returned a backbone whose forward gives keys {list(out)}, feature_info {names}"
        maps: list[Any] = list(out.values())
    elif isinstance(out, list | tuple):
        maps = list(out)
        if len(maps) != len(info):
            return (
                f"returned a backbone whose forward gives {len(maps)} maps, but its "
                f"feature_info describes {len(info)} ({names})"
            )
    else:
        return f"returned a backbone whose forward gives a {type(out).__name__}, not a list or dict"
    for level, fmap, chs, red in zip(names, maps, info.channels(), info.reduction(), strict=True):
        expected = (chs, math.ceil(height / red), math.ceil(width / red))
        if not isinstance(fmap, Tensor) or fmap.dim() != 4 or tuple(fmap.shape[1:]) != expected:
            got = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            return (
                f"returned a backbone whose {level!r} map is {got} for a {height}x{width} "
                f"input, but feature_info says {chs} channels at stride {red}, i.e. "
                f"(1, {expected[0]}, {expected[1]}, {expected[2]}) in NCHW"
            )
    return ""
