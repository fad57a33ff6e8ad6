"""Checks of option values, shared by the trunk, the heads and the weights code.

A value of the wrong type raises TypeError, a value of the right type out of range
raises ValueError; both messages name the option, the value and what is accepted.

This module imports nothing of ours, so any layer may use it.
"""

from collections.abc import Sequence
from typing import TypeGuard

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_int_sequence",
    "check_probability",
    "is_int",
    "is_number",
]


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an int and not a bool (``True`` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int = 1, multiple_of: int = 1) -> int:
    """``value`` if it is an int >= ``minimum`` and a multiple of ``multiple_of``.

    Raises:
        TypeError: not an int (a bool is not one either).
        ValueError: too small, or not a multiple.
    """
    if multiple_of > 1:
        what = f"a positive multiple of {multiple_of}"
    elif minimum == 1:
        what = "a positive int"
    else:
        what = f"an int >= {minimum}"
    if not is_int(value):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if value < minimum or value % multiple_of:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False.

    Raises:
        TypeError: anything else ("no", 0, None).
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_probability(name: str, value: object) -> float:
    """``value`` as a float if it is a number in [0, 1).

    Raises:
        TypeError: not an int or a float (a string, a bool).
        ValueError: outside [0, 1).
    """
    message = f"{name} must be a probability in [0, 1), got {value!r}"
    if not is_number(value):
        raise TypeError(message)
    if not 0.0 <= value < 1.0:
        raise ValueError(message)
    return float(value)


def check_int_sequence(name: str, value: object) -> tuple[int, ...]:
    """``value`` as a tuple if it is a non-empty sequence (list, tuple) of positive ints.

    Raises:
        TypeError: not a list or tuple (a single int, a string), or an item is not an int.
        ValueError: empty, or an item is not positive.
    """
    message = f"{name} must be a non-empty list or tuple of positive ints, got {value!r}"
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TypeError(message)
    items = tuple(value)
    if not all(is_int(v) for v in items):
        raise TypeError(message)
    if not items or not all(v > 0 for v in items):
        raise ValueError(message)
    return items


def check_choice(name: str, value: object, choices: Sequence[str | None]) -> None:
    """Accept ``value`` if it is one of ``choices`` (strings, and maybe None).

    Raises:
        TypeError: not a string (nor None, where None is a choice).
        ValueError: not one of ``choices``.
    """
    accepted = ", ".join(repr(c) for c in choices)
    if not isinstance(value, str) and not (value is None and None in choices):
        raise TypeError(f"{name} must be one of {accepted}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; accepted: {accepted}")
