"""The plugin manager: finds plugins, calls their hooks, fills the registries.

Order of work, on first registry use (never at import):

1. the built-in plugin (:mod:`backbones._builtins`) is registered;
2. unless ``BACKBONES_DISABLE_PLUGIN_AUTOLOAD`` is set, each entry point of
   group ``backbones`` is loaded on its own, so one that fails to import or
   to validate costs a warning and is recorded as failed, and the rest load;
3. every plugin's hooks are called one plugin at a time (again, one that
   raises is recorded and skipped), and their contributions are checked;
4. a name contributed by two sources is contested: the bare name raises
   :class:`~backbones.errors.NameConflictError` naming both, each stays
   reachable as ``"<plugin>:<name>"``, and a plugin's variants keep using the
   blocks of their own plugin;
5. only when the registries are complete are the problems issued as
   :class:`PluginWarning` (they are also kept on each :class:`PluginInfo`).

Discovery runs once per process, under a lock: other threads wait for it. The
manager fills the registries it is given (:mod:`backbones.catalog` owns them).

This module must not build networks; it only gathers what plugins contribute.
"""

import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from backbones import _builtins, hookspecs
from backbones.contract import BackboneEntry, factory_entry
from backbones.errors import PluginWarning
from backbones.hookspecs import PROJECT
from backbones.layers import check_block_entry
from backbones.namespace import SEPARATOR, Namespace
from backbones.registry import BUILTIN_PROVIDER, QUALIFIER, Registry
from backbones.resnet import resnet_entry
from backbones.variants import ResNetSpec

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "PluginWarning",
    "failed_plugins_note",
    "get_plugin_manager",
]

ENTRY_POINT_GROUP = PROJECT
DISABLE_AUTOLOAD_ENV = "BACKBONES_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN = BUILTIN_PROVIDER

# hook name -> the registry kind it fills, in the order they are filled
_HOOKS = {
    "backbones_register_layers": "layer",
    "backbones_register_blocks": "block",
    "backbones_register_heads": "head",
    "backbones_register_backbones": "backbone",
    "backbones_register_namespaces": "namespace",
}


@dataclass
class PluginInfo:
    """What the manager knows about one plugin.

    Attributes:
        name: the entry point's name ("builtin" for the built-in plugin).
        module: what the entry point points at.
        distribution: the installed distribution that declares it, if any.
        version: that distribution's version.
        registered: kind ("backbone", "block", "head") -> names it contributed.
        errors: why it failed to load, or what of it was rejected.
        loaded: whether the plugin itself imported and registered.
        conflicts: names it registered that another plugin registered too; they are
            reachable only as ``"<plugin>:<name>"``.
    """

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    loaded: bool = True
    conflicts: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """How messages name this plugin."""
        if self.name == BUILTIN:
            return "backbones (built-in)"
        dist = f" from {self.distribution} {self.version}" if self.distribution else ""
        return f"plugin {self.name!r} ({self.module}{dist})"

    @property
    def failed(self) -> bool:
        """Whether anything of this plugin went wrong."""
        return bool(self.errors)


def autoload_disabled() -> bool:
    """Whether ``BACKBONES_DISABLE_PLUGIN_AUTOLOAD`` asks to skip entry points."""
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


class PluginManager:
    """Loads plugins and puts their contributions into the registries.

    Use :func:`get_plugin_manager` for the one the registries use; build your own
    only to inspect plugins in isolation.

    Example:
        >>> pm = get_plugin_manager()
        >>> [p.name for p in pm.plugins()][:1]
        ['builtin']
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._lock = threading.RLock()
        self._loading = False
        self._loaded = False
        self._warnings: list[str] = []

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or failed, built-in first."""
        with self._lock:
            return list(self._info.values())

    def load(self, targets: "dict[str, Registry[Any]]") -> None:
        """Register the built-in plugin and installed entry points, then fill ``targets``.

        Args:
            targets: the registry to fill for each kind ("layer", "block", "head",
                "backbone", "namespace").


        Safe to call more than once and from several threads: only the first call
        works, the others wait for it. Problems are recorded on each plugin's
        :class:`PluginInfo` first and only then issued as :class:`PluginWarning`, so
        a warnings filter that turns them into errors (``-W error``) cannot leave
        discovery half done: the first call raises the warning, the registries are
        complete all the same.
        """
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:  # a re-entrant call from the loading thread
                return
            self._loading = True
            try:
                self._register(_builtins, PluginInfo(BUILTIN, _builtins.__name__))
                if not autoload_disabled():
                    for ep in sorted(_entry_points(), key=lambda e: e.name):
                        self._load_entry_point(ep)
                self._fill_registries(targets)
            finally:
                self._loading = False
                self._loaded = True
            pending, self._warnings = self._warnings, []
        for message in pending:
            warnings.warn(message, PluginWarning, stacklevel=2)

    def failed(self) -> list[PluginInfo]:
        """Plugins that failed to import or to register as a plugin."""
        return [p for p in self.plugins() if not p.loaded]

    # -- discovery ------------------------------------------------------------------
    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            ep.name,
            ep.value,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
        if ep.name in self._info or QUALIFIER in ep.name:
            why = (
                f"another plugin is already called {ep.name!r}"
                if ep.name in self._info
                else f"its name contains {QUALIFIER!r}, which separates a plugin from a name"
            )
            self._fail(info, why, loaded=False)
            return
        try:
            plugin = ep.load()
        except Exception as err:  # any import-time failure of third-party code
            self._fail(info, f"failed to import: {type(err).__name__}: {err}", loaded=False)
            return
        self._register(plugin, info)

    def _register(self, plugin: object, info: PluginInfo) -> None:
        self._info[info.name] = info
        try:
            self._pm.register(plugin, name=info.name)
            self._pm.check_pending()  # a misspelt hook name fails here, for this plugin only
        except pluggy.PluginValidationError as err:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            self._fail(info, f"is not a valid plugin: {err}", loaded=False)

    def _fail(self, info: PluginInfo, message: str, *, loaded: bool = True) -> None:
        self._info.setdefault(info.name, info)
        info.loaded = info.loaded and loaded
        info.errors.append(message)
        where = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
        self._warnings.append(f"backbones plugin {info.name!r}{where} {message}; skipped")

    # -- contributions --------------------------------------------------------------
    def _fill_registries(self, targets: "dict[str, Registry[Any]]") -> None:
        # kind -> name -> [(info, object)]
        offers: dict[str, dict[str, list[tuple[PluginInfo, Any]]]] = {k: {} for k in targets}
        for hook_name, kind in _HOOKS.items():
            if kind not in targets:
                continue
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                info = self._info[impl.plugin_name]
                for name, obj in self._call(impl.function, hook_name, info).items():
                    offers[kind].setdefault(name, []).append((info, obj))

        for kind, by_name in offers.items():
            target = targets[kind]
            for name, claims in by_name.items():
                accepted: list[PluginInfo] = []
                for info, obj in claims:
                    try:
                        entry = _as_entry(kind, name, obj, info.name, targets)
                        target.add(
                            name, entry, source=info.source, provider=info.name, contested_ok=True
                        )
                    except (TypeError, ValueError) as err:
                        self._fail(info, f"contributed an invalid {kind} {name!r}: {err}")
                        continue
                    info.registered.setdefault(kind, []).append(name)
                    accepted.append(info)
                if len(accepted) > 1:
                    self._record_conflict(kind, name, accepted)

    def _record_conflict(self, kind: str, name: str, claimants: list[PluginInfo]) -> None:
        picks = " or ".join(repr(f"{c.name}{QUALIFIER}{name}") for c in claimants)
        for info in claimants:
            others = " and ".join(c.source for c in claimants if c is not info)
            info.conflicts.append(
                f"{kind} {name!r} is also registered by {others}; the bare name is not "
                f"used, pick one with {picks}"
            )
        self._warnings.append(
            f"{kind} {name!r} is registered by {' and '.join(c.source for c in claimants)}; "
            f"the bare name is not used until one is uninstalled: pick one with {picks}. "
            f"Variants of each plugin keep using their own"
        )

    def _call(
        self, function: Callable[[], object], hook_name: str, info: PluginInfo
    ) -> dict[str, Any]:
        try:
            result = function()
        except Exception as err:  # third-party hook code
            self._fail(info, f"hook {hook_name} raised {type(err).__name__}: {err}")
            return {}
        if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
            self._fail(
                info, f"hook {hook_name} must return a dict of names, got {type(result).__name__}"
            )
            return {}
        return result


def _as_entry(
    kind: str, name: str, obj: object, provider: str, targets: "dict[str, Registry[Any]]"
) -> Any:
    """Check one contribution and turn it into what its registry stores."""
    if kind == "block":
        check_block_entry(name, obj)
        return obj
    if kind == "backbone":
        if isinstance(obj, ResNetSpec):  # its blocks come from its own plugin first
            return resnet_entry(
                obj, provider=provider, blocks=targets["block"], layers=targets["layer"]
            )
        if isinstance(obj, BackboneEntry):
            return obj
        return factory_entry(obj, family=name)  # type: ignore[arg-type]
    if kind == "namespace":
        if not isinstance(obj, Namespace):
            raise TypeError(f"expected a backbones.Namespace, got {type(obj).__name__}")
        if SEPARATOR in name:
            raise ValueError(f"a namespace name must not contain {SEPARATOR!r}")
        return obj
    if not callable(obj):
        raise TypeError(f"expected a factory (a callable), got {type(obj).__name__}")
    return obj


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


_MANAGER: PluginManager | None = None
_MANAGER_LOCK = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The plugin manager behind the registries, created on first use (once, under threads)."""
    global _MANAGER
    if _MANAGER is None:
        with _MANAGER_LOCK:
            if _MANAGER is None:
                _MANAGER = PluginManager()
    return _MANAGER


def failed_plugins_note() -> str:
    """A sentence naming the plugins that failed to load and why, or "" when none did.

    Unknown-name errors end with it: a name that a broken plugin would have provided
    should point at that plugin, not at a look-alike name.
    """
    failed = get_plugin_manager().failed()
    if not failed:
        return ""
    described = "; ".join(f"{p.source}: {' / '.join(p.errors)}" for p in failed)
    return (
        f"Note: {len(failed)} installed plugin{'s' if len(failed) > 1 else ''} failed to load "
        f"and may provide it: {described}. `python -m backbones plugins` lists plugins"
    )
