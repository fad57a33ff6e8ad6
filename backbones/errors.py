"""Every exception and warning the library raises, in one place.

Each error subclasses the builtin a caller would catch without knowing this library
(``ValueError``, ``TypeError``, ``KeyError``), and its message names the bad value,
what is accepted and, for names, the closest matches.

This module imports nothing of ours, so every layer can raise these.
"""

import difflib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BackboneContractError",
    "NameConflictError",
    "PluginWarning",
    "UnknownNameError",
    "UnsupportedOptionError",
    "WeightsError",
    "WeightsLoadError",
]


class UnknownNameError(KeyError, ValueError):
    """A name is not in a registry. Subclasses both KeyError and ValueError.

    Attributes:
        kind: what was looked up ("backbone", "block", ...).
        name: the name asked for.
        suggestions: registered names close to it.
        note: more context, e.g. plugins that failed to load and may provide the name.
    """

    def __init__(
        self, kind: str, name: str, available: Sequence[str], note: str = "", accepted: str = ""
    ) -> None:
        self.kind = kind
        self.name = name
        self.available = tuple(available)
        self.note = note
        self.accepted = accepted
        self.suggestions = difflib.get_close_matches(name, list(available), n=3, cutoff=0.6)
        message = f"unknown {kind} {name!r}"
        if self.suggestions:
            quoted = [repr(s) for s in self.suggestions]
            options = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            message += f"; did you mean {options}?"
        else:
            message += "."
        # A namespace of a thousand models says how to list them instead of listing them.
        listing = accepted or ", ".join(sorted(available)) or "(none registered)"
        message += f" Accepted: {listing}"
        if note:
            message += f". {note}"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # rebuild from the arguments, for pickle and copy
        return (type(self), (self.kind, self.name, self.available, self.note, self.accepted))


class NameConflictError(ValueError):
    """Two sources (plugins, or a plugin and the built-ins) registered one name.

    The bare name is not used: the library does not pick one silently. Each entry
    stays reachable under its qualified name ``"<plugin>:<name>"`` (``"builtin:basic"``);
    variants keep using the blocks of the plugin that provides them.

    Attributes:
        kind: "backbone", "block", "layer" or "head".
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


class UnsupportedOptionError(ValueError):
    """A backbone family was asked for an option it does not honour.

    Attributes:
        family: the family asked ("resnet", a plugin's own).
        option: the option's name.
        value: the value given.
        families: the registered families that do honour it.
    """

    def __init__(self, family: str, option: str, value: object, families: Sequence[str]) -> None:
        self.family, self.option, self.value = family, option, value
        self.families = tuple(families)
        have = (
            f"families that have it: {', '.join(self.families)}"
            if self.families
            else "no registered family has it"
        )
        super().__init__(
            f"{option}={value!r} is not supported by the {family!r} family; {have}. "
            f"Leave {option} at its default for this backbone"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.family, self.option, self.value, self.families))


class BackboneContractError(TypeError):
    """A backbone factory returned something that breaks the backbone contract.

    The contract: an ``nn.Module`` whose ``feature_info`` (a ``FeatureInfo``) describes
    the feature maps its forward returns, one NCHW tensor per level, in order.
    """


class WeightsError(ValueError):
    """Weights could not be found, fetched, verified, read or loaded. The message says why."""


class WeightsLoadError(WeightsError):
    """Strict loading found missing, unexpected or mismatched keys; nothing was changed.

    Attributes:
        report: the full ``LoadReport`` (its ``applied`` is set to False).
    """

    def __init__(self, report: Any, message: str) -> None:
        self.report = report
        report.applied = False
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.report, str(self)))


class PluginWarning(UserWarning):
    """A plugin failed to load, a hook of it raised, or it contributed something invalid."""
