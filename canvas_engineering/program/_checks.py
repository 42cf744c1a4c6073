"""Small checks shared by the program modules (private)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from canvas_engineering.errors import CanvasError, ProgramValidationError

__all__ = ["from_mapping", "is_int", "is_number", "prefix_message", "require_choice"]


def is_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> None:
    """Raise a ProgramValidationError naming ``owner``, ``name`` and the choices unless ``value`` is one."""
    if value not in choices:
        msg = f"{owner}: unknown {name} {value!r}; choose one of {', '.join(choices)}"
        raise ProgramValidationError(msg)


def from_mapping(cls: type, value: Mapping[str, Any], label: str) -> Any:
    """``cls(**value)``, turning a bad or missing keyword into a ProgramValidationError."""
    try:
        return cls(**dict(value))
    except TypeError as err:
        msg = f"{label}{err}"
        raise ProgramValidationError(msg) from None


def prefix_message(err: CanvasError, prefix: str) -> CanvasError:
    """Put ``prefix`` in front of ``err``'s message, in place, and return ``err``.

    The same exception object is re-raised afterwards (bare ``raise``), so its class and
    every attribute (e.g. :attr:`ProgramCycleError.connections`) survive; only the message
    gains the context (which region or connection, which file).
    """
    first = str(err.args[0]) if err.args else ""
    err.args = (f"{prefix}{first}", *err.args[1:])
    return err
