"""The registry container: names mapped to objects, with providers, conflicts and close matches.

A :class:`Registry` refuses a name that is already taken, suggests close matches
for an unknown name, keeps every provider of a contested name reachable as
``"<provider>:<name>"``, and can fill itself on first use through a loader.

This module knows nothing of plugins, weights or networks: the registries the
library uses are made and filled in :mod:`backbones.catalog`.
"""

import fnmatch
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from backbones.errors import NameConflictError, UnknownNameError

__all__ = [
    "BUILTIN_PROVIDER",
    "QUALIFIER",
    "RUNTIME_PROVIDER",
    "LoadOnce",
    "Registry",
    "RegistryEntry",
]

T = TypeVar("T")


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

    def entries(self) -> list[tuple[str, RegistryEntry[T]]]:
        """Every ``(bare name, entry)``, contested names once per provider."""
        self._ensure_loaded()
        with self._lock:
            return [(n, e) for n, es in self._entries.items() for e in es]

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
