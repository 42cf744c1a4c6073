"""Argument checks shared by the whole library, each written once.

Every helper takes the value, the ``field`` it came from (a label such as
``"CanvasLayout.T"`` or ``"field 'arm.joints': h"``) and the project ``error`` class to
raise, and returns the value (converted where that is the point, e.g. ``float``). A
failure raises ``error(f"{field}{sep}{value!r} must be {rule}")``, so every message names
the field, the offending value and the rule broken. ``sep`` is ``"="`` for keyword-style
labels and ``" "`` for the prose style some declarations use (``period 0 must be ...``).

``bool`` is refused wherever a number is expected: ``True`` is an ``int`` to Python but is
never a meaningful size, count or weight. NumPy scalars are accepted wherever the Python
number is (``np.int64`` as an int, ``np.float32`` as a float, ``np.bool_`` as a bool; never
``np.bool_`` as a number), and the helpers return the Python value (``int``, ``float``,
``bool``), so what they return serialises to JSON and indexes tensors like a literal.

This module is in the foundation layer: it imports only :mod:`canvas_engineering.errors`
(and NumPy, a dependency of the package).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from canvas_engineering.errors import CanvasError, CanvasValidationError

__all__ = [
    "IDENTIFIER",
    "ErrorFactory",
    "check_bool",
    "check_choice",
    "check_finite_float",
    "check_int",
    "check_name",
    "check_non_negative_int",
    "check_positive_int",
    "is_finite_number",
    "is_int",
    "positive_finite_numbers",
]

#: Builds the exception to raise from its message: a project error class, or a
#: ``functools.partial`` of one that needs more arguments (e.g. ``FieldValidationError(path=...)``).
ErrorFactory = Callable[[str], CanvasError]

#: A Python-identifier-like name: a letter or underscore, then letters, digits or underscores.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_T = TypeVar("_T")


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (``int`` or a NumPy integer) that is not a ``bool``."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a finite real number (``int``, ``float`` or a NumPy scalar of either), not a ``bool``.

    An integer too large for a float (``10**400``) is not finite as a number.
    """
    if not isinstance(value, numbers.Real) or _is_bool(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _fail(error: ErrorFactory, field: str, sep: str, value: object, rule: str) -> CanvasError:
    return error(f"{field}{sep}{value!r} must be {rule}")


def _range_rule(
    kind: str,
    minimum: float | None,
    maximum: float | None,
    open_min: bool = False,
    open_max: bool = False,
) -> str:
    # One bound reads as a comparison, two as an interval: "an integer >= 1", "a finite number in [0, 1)".
    if minimum is not None and maximum is not None:
        return f"{kind} in {'(' if open_min else '['}{minimum}, {maximum}{')' if open_max else ']'}"
    if minimum is not None:
        return f"{kind} {'>' if open_min else '>='} {minimum}"
    if maximum is not None:
        return f"{kind} {'<' if open_max else '<='} {maximum}"
    return kind


def check_int(
    value: object,
    field: str,
    *,
    error: ErrorFactory = CanvasValidationError,
    minimum: int | None = None,
    maximum: int | None = None,
    rule: str | None = None,
    sep: str = "=",
) -> int:
    """Check that ``value`` is an integer (not a bool) in ``[minimum, maximum]``.

    Args:
        value: the value to check.
        field: what the value is, as the message should name it.
        error: the project error class (or factory) to raise.
        minimum: smallest allowed value (inclusive), or ``None``.
        maximum: largest allowed value (inclusive), or ``None``.
        rule: the rule as the message should state it (default: derived from the bounds,
            e.g. ``"an integer >= 1"``); pass one to name a bound (``"an integer in [0, T=4]"``).
        sep: text between ``field`` and the value in the message.

    Returns:
        ``int(value)`` (a NumPy integer becomes a Python ``int``).

    Raises:
        CanvasError: of the class ``error`` builds, naming ``field``, ``value`` and the rule.

    """
    ok = is_int(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)  # type: ignore[operator]
    if not ok:
        raise _fail(error, field, sep, value, rule or _range_rule("an integer", minimum, maximum))
    return int(value)  # type: ignore[call-overload]  # a NumPy integer becomes a Python int


def check_positive_int(
    value: object, field: str, *, error: ErrorFactory = CanvasValidationError, sep: str = "="
) -> int:
    """Check that ``value`` is an integer >= 1 (see :func:`check_int`)."""
    return check_int(value, field, error=error, minimum=1, sep=sep)


def check_non_negative_int(
    value: object, field: str, *, error: ErrorFactory = CanvasValidationError, sep: str = "="
) -> int:
    """Check that ``value`` is an integer >= 0 (see :func:`check_int`)."""
    return check_int(value, field, error=error, minimum=0, sep=sep)


def check_finite_float(
    value: object,
    field: str,
    *,
    error: ErrorFactory = CanvasValidationError,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
    rule: str | None = None,
    sep: str = "=",
) -> float:
    """Check that ``value`` is a finite number (int, float or NumPy scalar, not a bool) within optional bounds.

    Args:
        value: the value to check.
        field: what the value is, as the message should name it.
        error: the project error class (or factory) to raise.
        minimum: lower bound, or ``None``.
        maximum: upper bound, or ``None``.
        open_min: exclude ``minimum`` itself (``value > minimum``).
        open_max: exclude ``maximum`` itself (``value < maximum``).
        rule: the rule as the message should state it (default: derived from the bounds,
            e.g. ``"a finite number > 0"`` or ``"a finite number in [0, 1)"``).
        sep: text between ``field`` and the value in the message.

    Returns:
        ``float(value)``.

    Raises:
        CanvasError: of the class ``error`` builds, naming ``field``, ``value`` and the rule.

    """
    ok = is_finite_number(value)
    if ok and minimum is not None:
        ok = value > minimum if open_min else value >= minimum  # type: ignore[operator]
    if ok and maximum is not None:
        ok = value < maximum if open_max else value <= maximum  # type: ignore[operator]
    if not ok:
        raise _fail(
            error, field, sep, value, rule or _range_rule("a finite number", minimum, maximum, open_min, open_max)
        )
    return float(value)  # type: ignore[arg-type]


def check_bool(value: object, field: str, *, error: ErrorFactory = CanvasValidationError, sep: str = "=") -> bool:
    """Check that ``value`` is a ``bool`` or ``np.bool_`` (``0`` / ``1`` are refused: they usually mean a mix-up).

    Returns:
        ``bool(value)``.

    Raises:
        CanvasError: of the class ``error`` builds, naming ``field`` and ``value``.

    """
    if not _is_bool(value):
        raise _fail(error, field, sep, value, "a bool")
    return bool(value)


def check_name(
    value: object,
    field: str,
    *,
    error: ErrorFactory = CanvasValidationError,
    pattern: re.Pattern[str] | None = None,
    sep: str = "=",
) -> str:
    """Check that ``value`` is a non-empty string, matching ``pattern`` in full when given.

    Args:
        value: the value to check.
        field: what the value is, as the message should name it.
        error: the project error class (or factory) to raise.
        pattern: a regular expression the whole name must match, e.g. :data:`IDENTIFIER`.
        sep: text between ``field`` and the value in the message.

    Returns:
        ``value``.

    Raises:
        CanvasError: of the class ``error`` builds, naming ``field``, ``value`` and the rule.

    """
    if not isinstance(value, str) or not value:
        raise _fail(error, field, sep, value, "a non-empty string")
    if pattern is not None and pattern.fullmatch(value) is None:
        raise _fail(error, field, sep, value, f"a name matching {pattern.pattern}")
    return value


def check_choice(
    value: _T,
    field: str,
    options: Sequence[object],
    *,
    error: ErrorFactory = CanvasValidationError,
    sep: str = "=",
) -> _T:
    """Check that ``value`` is one of ``options``.

    A bool only matches a bool option (``True == 1`` would otherwise pick option ``1``).

    Args:
        value: the value to check.
        field: what the value is, as the message should name it.
        options: the allowed values, in the order the message lists them.
        error: the project error class (or factory) to raise.
        sep: text between ``field`` and the value in the message.

    Returns:
        ``value``.

    Raises:
        CanvasError: of the class ``error`` builds, naming ``field``, ``value`` and the options.

    """
    try:
        ok = any(bool(value == option) and _is_bool(value) == _is_bool(option) for option in options)
    except (TypeError, ValueError, RuntimeError):  # e.g. a tensor, whose == is elementwise
        ok = False
    if not ok:
        raise _fail(error, field, sep, value, f"one of {', '.join(map(repr, options))}")
    return value


def positive_finite_numbers(values: object, count: int) -> list[float] | None:
    """Return ``values`` as ``count`` floats, each finite and > 0, or ``None`` if they are not.

    Sharpening factors (betas) multiply attention logits: an infinite one turns every logit
    into inf and the output into NaN, so finiteness is part of the rule. Each value is a
    number (NumPy scalars included) or a one-element tensor; bools are refused.
    """
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        return None
    out = []
    for v in items:
        if hasattr(v, "numel") and hasattr(v, "item") and v.numel() == 1:  # a 0-d / one-element tensor
            v = v.item()
        if not is_finite_number(v) or not float(v) > 0:
            return None
        out.append(float(v))
    return out if len(out) == count else None
