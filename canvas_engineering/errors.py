"""Exceptions raised by canvas-engineering.

Every class subclasses a builtin so callers can catch ``ValueError`` / ``KeyError``
without importing this module. Messages name the culprit (region, connection, key or
file), the rule that was broken and the offending value.
"""

from __future__ import annotations

__all__ = [
    "CanvasValidationError",
    "ConnectionValidationError",
    "LayoutValidationError",
    "LoopCheckpointError",
    "RegionValidationError",
    "SchemaValidationError",
    "UnknownAttentionTypeError",
    "UnknownRegionError",
]


class CanvasValidationError(ValueError):
    """Base class: a canvas declaration breaks a rule."""


class LoopCheckpointError(CanvasValidationError):
    """A loop checkpoint is unreadable, not a loop checkpoint, or does not fit the model.

    Attributes:
        path: the checkpoint file.
        parameter: the first offending parameter name, when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None, parameter: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.parameter = parameter


class RegionValidationError(CanvasValidationError):
    """A region (its bounds, period, loss weight, embedding, ...) is invalid."""


class LayoutValidationError(CanvasValidationError):
    """The layout as a whole is invalid (grid size, overlap, t_current, ...)."""


class ConnectionValidationError(CanvasValidationError):
    """A connection of a topology is invalid or names an unknown region."""


class SchemaValidationError(CanvasValidationError):
    """A serialised schema is malformed (missing or bad key, unreadable file)."""


class UnknownAttentionTypeError(CanvasValidationError, KeyError):
    """An attention function type name is not declared or installed."""

    def __str__(self) -> str:
        # KeyError would repr-quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class UnknownRegionError(CanvasValidationError, KeyError):
    """A region name is not part of the layout."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
