"""Small checks shared by the program modules (private)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from canvas_engineering.errors import CanvasError, ProgramValidationError
from canvas_engineering.validation import check_choice

__all__ = ["from_mapping", "prefix_message", "require_choice"]


def require_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> None:
    """Raise a ProgramValidationError naming ``owner``, ``name`` and the choices unless ``value`` is one.

    :func:`~canvas_engineering.validation.check_choice` decides membership (so a tensor or an
    unhashable value is refused cleanly); the message keeps the wording the program modules have
    always used (``unknown kind 'x'; choose one of a, b``), which users match on.
    """

    def unknown(_: str) -> ProgramValidationError:
        return ProgramValidationError(f"{owner}: unknown {name} {value!r}; choose one of {', '.join(choices)}")

    check_choice(value, f"{owner}: {name}", choices, error=unknown)


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
