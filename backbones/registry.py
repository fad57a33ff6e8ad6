"""Registries of backbones and residual blocks, and the functions users call on them.

A registry maps names to factories. It refuses a name that is already taken,
names close matches when asked for an unknown name, and fills itself with the
built-in entries on first use rather than at import.

This module must not build networks itself; factories do that.
"""

import difflib
import fnmatch
import inspect
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import nn

from backbones._options import unknown_options_error
from backbones.features import FeatureInfo

__all__ = [
    "NameConflictError",
    "Registry",
    "UnknownNameError",
    "create_backbone",
    "create_head",
    "get_block",
    "list_backbones",
    "list_blocks",
    "list_heads",
    "register_backbone",
    "register_block",
    "register_head",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

BackboneFactory = Callable[..., nn.Module]
"""Builds a backbone. Called with every option of :func:`create_backbone` as a keyword."""

HeadFactory = Callable[..., nn.Module]
"""Builds a head. Called as ``factory(feature_info=..., **head_kwargs)``."""


class UnknownNameError(KeyError, ValueError):
    """A name is not in a registry. Subclasses both KeyError and ValueError.

    Attributes:
        kind: what was looked up ("backbone", "block", ...).
        name: the name asked for.
        suggestions: registered names close to it.
        note: more context, e.g. plugins that failed to load and may provide the name.
    """

    def __init__(self, kind: str, name: str, available: Sequence[str], note: str = "") -> None:
        self.kind = kind
        self.name = name
        self.available = tuple(available)
        self.note = note
        self.suggestions = difflib.get_close_matches(name, list(available), n=3, cutoff=0.6)
        message = f"unknown {kind} {name!r}"
        if self.suggestions:
            quoted = [repr(s) for s in self.suggestions]
            options = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            message += f"; did you mean {options}?"
        else:
            message += "."
        message += f" Accepted: {', '.join(sorted(available)) or '(none registered)'}"
        if note:
            message += f". {note}"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # rebuild from the arguments, for pickle and copy
        return (type(self), (self.kind, self.name, self.available, self.note))


class NameConflictError(ValueError):
    """Two sources (plugins, or a plugin and the built-ins) registered one name.

    The bare name is not used: the library does not pick one silently. Each entry
    stays reachable under its qualified name ``"<plugin>:<name>"`` (``"builtin:basic"``);
    variants keep using the blocks of the plugin that provides them.

    Attributes:
        kind: "backbone", "block" or "head".
        name: the contested name.
        sources: where each registration came from.
        qualified: the qualified names that pick one of them.
    """

    def __init__(
        self, kind: str, name: str, sources: Sequence[str], qualified: Sequence[str] = ()
    ) -> None:
        self.kind, self.name = kind, name
        self.sources, self.qualified = tuple(sources), tuple(qualified)
        pick = (
            f"Pick one explicitly ({' or '.join(repr(q) for q in self.qualified)}), uninstall "
            if self.qualified
            else "Uninstall "
        )
        super().__init__(
            f"{kind} {name!r} is registered by more than one source: "
            f"{' and '.join(self.sources)}; the bare name is not used. {pick}one of them, "
            f"or set BACKBONES_DISABLE_PLUGIN_AUTOLOAD=1 to skip installed plugins"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.name, self.sources, self.qualified))


QUALIFIER = ":"
"""Separates a provider from a name: ``"builtin:basic"``, ``"attention:se_bottleneck"``."""

BUILTIN_PROVIDER = "builtin"
"""The provider name of the library's own entries."""

RUNTIME_PROVIDER = "runtime"
"""The provider name of entries registered in-process with ``register_*``."""


class LoadOnce:
    """Runs a loader once, thread-safely, however many registries share it.

    The first caller runs ``fn`` while holding a lock; other threads block until it
    has finished and then see everything it registered. A call from inside ``fn``
    (the loader registering entries) returns at once. ``done`` turns true only when
    ``fn`` has returned (or raised), so no thread ever sees a half-filled registry.
    """

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._lock = threading.RLock()
        self._running = False
        self.done = False

    def __call__(self) -> None:
        if self.done:  # the fast path, without the lock
            return
        with self._lock:
            if self.done or self._running:  # `_running` is seen only by the loading thread
                return
            self._running = True
            try:
                self._fn()
            finally:
                self._running = False
                self.done = True


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registration of a name.

    Attributes:
        obj: what was registered.
        source: how messages name where it came from.
        provider: the plugin that registered it ("builtin", an entry point's name, or
            "runtime"); ``"<provider>:<name>"`` picks this entry when others share the name.
    """

    obj: T
    source: str
    provider: str


class Registry(Generic[T]):
    """Names mapped to objects, filled lazily by ``loader`` on first use; safe under threads.

    A name registered by more than one provider is *contested*: looking up the bare
    name raises :class:`NameConflictError`, and ``"<provider>:<name>"`` picks one.

    Args:
        kind: what the registry holds, used in messages ("backbone", "block").
        loader: called once, on first use, to register the built-in entries; pass one
            :class:`LoadOnce` to several registries that one loader fills.
        note: called when a lookup fails; returns extra context for the message (e.g.
            plugins that failed to load), or "".

    Example:
        >>> reg: Registry[int] = Registry("number")
        >>> reg.add("one", 1, source="docs")
        >>> reg.get("one"), reg.names("o*")
        (1, ['one'])
    """

    def __init__(
        self,
        kind: str,
        loader: Callable[[], None] | None = None,
        *,
        note: Callable[[], str] | None = None,
    ) -> None:
        self.kind = kind
        self._loader: LoadOnce | None = (
            loader if isinstance(loader, LoadOnce) or loader is None else LoadOnce(loader)
        )
        self._note = note
        self._lock = threading.RLock()
        self._entries: dict[str, list[RegistryEntry[T]]] = {}

    def _ensure_loaded(self) -> None:
        if self._loader is not None and not self._loader.done:
            self._loader()  # outside self._lock: the loader takes it through add()

    def add(
        self,
        name: str,
        obj: T,
        *,
        source: str,
        provider: str = RUNTIME_PROVIDER,
        contested_ok: bool = False,
    ) -> None:
        """Register ``obj`` under ``name``.

        Args:
            name: the name; a non-empty string without ``":"``.
            obj: what to register.
            source: how messages name its origin.
            provider: the plugin registering it, for ``"<provider>:<name>"`` lookups.
            contested_ok: let a second provider claim a taken name (the plugin manager
                does, to record a conflict); otherwise a taken name is refused.

        Raises:
            TypeError: ``name`` is not a non-empty string.
            ValueError: ``name`` contains ``":"``, or is taken (and not ``contested_ok``,
                or taken by the same provider); the message names the existing entry.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if QUALIFIER in name:
            raise ValueError(
                f"{self.kind} name {name!r} contains {QUALIFIER!r}, which separates a plugin "
                f"from a name ('builtin:basic'); choose a name without it"
            )
        self._ensure_loaded()
        with self._lock:
            taken = self._entries.get(name, [])
            same = [e for e in taken if e.provider == provider]
            if taken and (not contested_ok or same):
                holder = (same or taken)[0].source
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {holder}; "
                    f"refusing to replace it with one from {source}"
                )
            self._entries[name] = [*taken, RegistryEntry(obj, source, provider)]

    def remove(self, name: str) -> None:
        """Forget every entry called ``name``, or one ``"<provider>:<name>"``; no-op if absent."""
        self._ensure_loaded()
        with self._lock:
            provider, _, bare = name.rpartition(QUALIFIER)
            kept = [e for e in self._entries.get(bare, []) if provider and e.provider != provider]
            if kept:
                self._entries[bare] = kept
            else:
                self._entries.pop(bare, None)

    def conflicts(self) -> dict[str, tuple[str, ...]]:
        """Names claimed by more than one provider, with their sources."""
        self._ensure_loaded()
        with self._lock:
            return {
                n: tuple(e.source for e in es) for n, es in self._entries.items() if len(es) > 1
            }

    def entry(self, name: str, *, prefer: Sequence[str] = ()) -> RegistryEntry[T]:
        """The registration ``name`` refers to.

        Args:
            name: a bare name, or ``"<provider>:<name>"``.
            prefer: providers whose entry wins, in order, when they have one; a variant
                passes its own plugin (then "builtin") so another plugin's block of the
                same name cannot replace the one it was written for.

        Raises:
            UnknownNameError: no such entry; the message suggests close matches.
            NameConflictError: several providers registered the bare ``name``.
        """
        self._ensure_loaded()
        with self._lock:
            if isinstance(name, str):
                provider, _, bare = name.rpartition(QUALIFIER)
                entries = self._entries.get(bare, [])
                if provider:
                    entries = [e for e in entries if e.provider == provider]
                else:
                    for wanted in prefer:
                        entries = [e for e in entries if e.provider == wanted] or entries
                        if len(entries) == 1:
                            break
                if len(entries) == 1:
                    return entries[0]
                if entries:
                    raise NameConflictError(
                        self.kind,
                        bare,
                        [e.source for e in entries],
                        [f"{e.provider}{QUALIFIER}{bare}" for e in entries],
                    )
            available = self._names_locked("*")
            note = ""
            if isinstance(name, str) and QUALIFIER in name and self._entries.get(bare):
                offered = ", ".join(
                    repr(f"{e.provider}{QUALIFIER}{bare}") for e in self._entries[bare]
                )
                note = f"No plugin {provider!r} provides {bare!r}; it is provided as {offered}"
        if not note and self._note is not None:
            note = self._note()
        raise UnknownNameError(self.kind, str(name), available, note)

    def get(self, name: str, *, prefer: Sequence[str] = ()) -> T:
        """The object registered as ``name``; see :meth:`entry`."""
        return self.entry(name, prefer=prefer).obj

    def source(self, name: str) -> str:
        """Where the entry ``name`` came from."""
        return self.entry(name).source

    def provider(self, name: str) -> str:
        """The plugin that registered the entry ``name`` ("builtin", "runtime", ...)."""
        return self.entry(name).provider

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the fnmatch ``pattern`` (``*``, ``?``, ``[seq]``).

        A contested name is listed in its qualified forms (``builtin:basic``,
        ``other:basic``); the pattern is matched against the bare name.
        """
        self._ensure_loaded()
        with self._lock:
            return self._names_locked(pattern)

    def _names_locked(self, pattern: str) -> list[str]:
        out: list[str] = []
        for name, entries in self._entries.items():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            if len(entries) == 1:
                out.append(name)
            else:
                out += [f"{e.provider}{QUALIFIER}{name}" for e in entries]
        return sorted(out)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.entry(name)
        except (UnknownNameError, NameConflictError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _load_plugins() -> None:
    # Imported here, not at module level: discovery imports plugins and the trunk,
    # and `import backbones` should stay cheap.
    from backbones.plugin_manager import get_plugin_manager

    get_plugin_manager().load()


def _failed_plugins_note() -> str:
    from backbones.plugin_manager import failed_plugins_note

    return failed_plugins_note()


# One loader fills all three registries: whichever is used first triggers discovery,
# and every thread waits for all of it.
_DISCOVERY = LoadOnce(_load_plugins)
BACKBONES: Registry[BackboneFactory] = Registry("backbone", _DISCOVERY, note=_failed_plugins_note)
BLOCKS: Registry[type[nn.Module]] = Registry("block", _DISCOVERY, note=_failed_plugins_note)
HEADS: Registry[HeadFactory] = Registry("head", _DISCOVERY, note=_failed_plugins_note)


def _source_of(obj: object) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator that registers a backbone factory under ``name``.

    The factory is called by :func:`create_backbone` with every option as a
    keyword argument and must return an ``nn.Module`` with a ``feature_info``
    attribute (a :class:`~backbones.features.FeatureInfo`) whose forward returns
    the feature maps it describes.

    Args:
        name: the registry name.

    Returns:
        A decorator that registers and returns the factory unchanged.

    Raises:
        TypeError: ``name`` is not a non-empty string, or what is decorated is not
            callable.
        ValueError: ``name`` is already registered; the message names the existing entry.

    Example:
        >>> @register_backbone("my_resnet")  # doctest: +SKIP
        ... def my_resnet(**options):
        ...     return create_backbone("resnet18", **options)
    """
    _check_name("backbone", "register_backbone", name)

    def decorator(factory: F) -> F:
        _check_factory("backbone", name, factory, "an nn.Module with feature_info")
        BACKBONES.add(name, factory, source=_source_of(factory))
        return factory

    return decorator


def register_block(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a residual block under ``name``.

    A block is an ``nn.Module`` class with an int class attribute ``expansion``,
    built by the trunk as ``Block(inplanes, planes, stride=..., downsample=...,
    groups=..., base_width=..., dilation=..., first_dilation=..., norm_layer=...,
    drop_path=...)``.

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
        _check_block(name, cls)
        BLOCKS.add(name, cls, source=_source_of(cls))
        return cls

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
        _check_factory("head", name, factory, "a head nn.Module")
        HEADS.add(name, factory, source=_source_of(factory))
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


def _check_factory(kind: str, name: str, factory: object, returns: str) -> None:
    if not callable(factory):
        raise TypeError(
            f"{kind} {name!r} must be registered with a factory (a callable returning "
            f"{returns}), got {type(factory).__name__} {factory!r}"
        )


def _check_block(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"block {name!r} must be an nn.Module subclass, got {cls!r}")
    expansion = getattr(cls, "expansion", None)
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
        raise TypeError(
            f"block {name!r} ({cls.__qualname__}) needs a positive int class attribute "
            f"'expansion', got {expansion!r}"
        )


def get_block(name: str) -> type[nn.Module]:
    """The block class registered as ``name``.

    Raises:
        UnknownNameError: no such block; the message suggests close matches.

    Example:
        >>> get_block("bottleneck").expansion
        4
    """
    return BLOCKS.get(name)


def list_backbones(pattern: str = "*") -> list[str]:
    """Sorted names of registered backbones matching an fnmatch ``pattern``.

    Example:
        >>> list_backbones("resnet1*")
        ['resnet101', 'resnet101d', 'resnet152', 'resnet18']
    """
    return BACKBONES.names(pattern)


def list_heads(pattern: str = "*") -> list[str]:
    """Sorted names of registered heads matching an fnmatch ``pattern``.

    Example:
        >>> "classification" in list_heads()
        True
    """
    return HEADS.names(pattern)


def create_head(name: str, *, feature_info: FeatureInfo, **head_kwargs: Any) -> nn.Module:
    """Build a registered head for a backbone described by ``feature_info``.

    Args:
        name: a registered head, see :func:`list_heads`.
        feature_info: the backbone's :class:`~backbones.features.FeatureInfo`.
        **head_kwargs: the head's own options (e.g. ``num_classes``).

    Returns:
        An ``nn.Module`` whose forward takes the backbone's list of feature maps.

    Raises:
        UnknownNameError: ``name`` is not registered.
        TypeError: ``feature_info`` is not a FeatureInfo, or an option is not the head's.

    Example:
        >>> bb = create_backbone("resnet18")
        >>> head = create_head("classification", feature_info=bb.feature_info, num_classes=3)
    """
    factory = HEADS.get(name)
    if not isinstance(feature_info, FeatureInfo):
        raise TypeError(
            f"feature_info must be a backbone's FeatureInfo (backbone.feature_info), "
            f"got {type(feature_info).__name__}"
        )
    return factory(feature_info=feature_info, **head_kwargs)


def list_blocks(pattern: str = "*") -> list[str]:
    """Sorted names of registered blocks matching an fnmatch ``pattern``.

    Example:
        >>> list_blocks("*bottleneck")[:1]  # installed plugins may add more
        ['bottleneck']
    """
    return BLOCKS.names(pattern)


def create_backbone(
    name: str,
    *,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    in_chans: int = 3,
    output_stride: int = 32,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    norm_layer: str | Callable[[int], nn.Module] = "batchnorm",
    drop_path_rate: float = 0.0,
    zero_init_last: bool = False,
    block: str | Sequence[str] | None = None,
    block_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    return_dict: bool = False,
    pretrained: "bool | str | os.PathLike[str]" = False,
    pretrained_strict: bool = True,
    pretrained_format: str | None = None,
    pretrained_sha256: str = "",
    in_chans_strategy: str | Sequence[int | None] = "repeat",
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    **unknown: Any,
) -> nn.Module:
    """Build a registered backbone as a multi-scale feature extractor.

    Args:
        name: a registered backbone, see :func:`list_backbones`.
        out_indices: feature levels to return: 0 = stem (stride 2), 1..4 =
            layer1..layer4 (strides 4, 8, 16, 32); negative indices count from
            the end. Stages deeper than the deepest level asked for are not built.
        in_chans: number of input image channels.
        output_stride: 8, 16 or 32; below 32 the last stages dilate instead of striding.
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and layer1..layer k.
            Frozen parameters do not require grad and frozen modules stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode while training.
        norm_layer: "batchnorm", "frozen_batchnorm", "syncbatchnorm", "groupnorm",
            or a callable mapping a channel count to a module.
        drop_path_rate: stochastic depth rate, rising linearly from 0 at the first
            block to this value at the last.
        zero_init_last: start each block's last norm at zero gamma.
        block: a registered block name for every stage, or four names, one per stage.
            ``None`` keeps the variant's own block.
        block_kwargs: extra keyword arguments passed to every block, or four dicts,
            one per stage.
        return_dict: return ``{module_name: tensor}`` instead of a list.
        pretrained: ``True`` for the variant's default weights, a weights tag of the
            variant (``"tv_in1k"``), a local file, an http(s) URL or ``"hf-hub:<repo>"``.
            See :mod:`backbones.weights`.
        pretrained_strict: raise if any backbone weight is missing from the checkpoint
            or any checkpoint key is unexplained (classifier keys, other model parts and
            stages not built are dropped knowingly). Nothing is loaded on failure.
        pretrained_format: the checkpoint format ("torchvision", "timm", "mmdet",
            "lightning", "detectron2"); detected when None.
        pretrained_sha256: expected sha256 (or prefix) of the weights file.
        in_chans_strategy: how 3-channel input-conv weights become ``in_chans``:
            "repeat" (timm's), "mean", "zeros", another registered strategy, or a
            channel map such as ``(0, 1, 2, 0)``.
        pretrained_cfg_overlay: values replacing those of ``pretrained_cfg``.
        **unknown: taken only to refuse them with a better message than Python's:
            another library's spelling (``trainable_layers``, ``features_only``,
            ``norm_cfg``, ...) is answered with this library's option.

    Returns:
        An ``nn.Module`` whose forward returns the requested feature maps and whose
        ``feature_info`` describes them. It also has ``pretrained_cfg`` (timm's keys:
        mean, std, input_size, interpolation, ...), ``backbone_config`` (the options
        above, for :func:`~backbones.weights.save_backbone`) and, when weights were
        loaded, ``pretrained_report``.

    Raises:
        UnknownNameError: ``name`` (or a block name) is not registered.
        ValueError, TypeError: an option is out of range or of the wrong type;
            the message names the value and what is accepted.
        TypeError: ``name`` is not a string; an option is unknown (the message says
            what to use instead); or the factory returned no ``nn.Module`` with a
            ``feature_info`` (the message names the factory).

    Example:
        >>> bb = create_backbone("resnet50", out_indices=(1, 2, 3, 4))
        >>> bb.feature_info.channels()
        [256, 512, 1024, 2048]
    """
    from backbones.weights.config import set_attributes
    from backbones.weights.pretrained import apply_pretrained

    if not isinstance(name, str):
        raise TypeError(
            f"name must be a registered backbone name (a str, see list_backbones()), "
            f"got {type(name).__name__} {name!r}"
        )
    if unknown:
        raise unknown_options_error("create_backbone", unknown, _create_backbone_options())
    factory = BACKBONES.get(name)
    options: dict[str, Any] = {
        "out_indices": out_indices,
        "in_chans": in_chans,
        "output_stride": output_stride,
        "frozen_stages": frozen_stages,
        "norm_eval": norm_eval,
        "norm_layer": norm_layer,
        "drop_path_rate": drop_path_rate,
        "zero_init_last": zero_init_last,
        "block": block,
        "block_kwargs": block_kwargs,
        "return_dict": return_dict,
    }
    model = factory(**options)
    _check_backbone(name, factory, model)
    apply_pretrained(
        model,
        name,
        tuple(getattr(factory, "weights", ())),
        pretrained=pretrained,
        in_chans=in_chans,
        strict=pretrained_strict,
        format=pretrained_format,
        in_chans_strategy=in_chans_strategy,
        sha256=pretrained_sha256,
        cfg_overlay=pretrained_cfg_overlay,
    )
    set_attributes(model, backbone_config={"name": name, **_jsonable(options)})
    return model


def _create_backbone_options() -> list[str]:
    """The options of :func:`create_backbone`, read from its signature (their one definition)."""
    params = inspect.signature(create_backbone).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _check_backbone(name: str, factory: Callable[..., Any], model: object) -> None:
    """Check the backbone contract once, where the factory returns (as detectron2's build does)."""
    info = getattr(model, "feature_info", None)
    if isinstance(model, nn.Module) and isinstance(info, FeatureInfo):
        return
    if not isinstance(model, nn.Module):
        problem = f"returned {type(model).__name__} {model!r}, not an nn.Module"
    elif not hasattr(model, "feature_info"):
        problem = f"returned a {type(model).__name__} without a feature_info attribute"
    else:
        problem = (
            f"returned a {type(model).__name__} whose feature_info is a "
            f"{type(info).__name__}, not a FeatureInfo"
        )
    raise TypeError(
        f"backbone {name!r}: its factory {_source_of(factory)} {problem}; a factory must "
        f"return an nn.Module whose feature_info (a backbones.features.FeatureInfo) describes "
        f"the feature maps its forward returns"
    )


def _jsonable(value: Any) -> Any:
    """Tuples as lists, recursively: the options as :func:`save_backbone` writes them."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
