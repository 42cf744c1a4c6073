"""Exceptions raised by canvas-engineering.

Every exception the library raises derives from :class:`CanvasError`, so
``except CanvasError`` catches them all. Every class also subclasses the builtin that
describes its fault, so callers can catch ``ValueError`` / ``KeyError`` /
``RuntimeError`` / ``ImportError`` without importing this module. Messages name the
culprit (region, connection, field, key or file), the rule that was broken and the
offending value.

Sections are delimited by ``# ==`` banners; each layer that owns errors keeps its classes
in its own section.
"""

from __future__ import annotations

import os

__all__ = [
    "CanvasError",
    "CanvasValidationError",
    "ConnectionValidationError",
    "FieldValidationError",
    "IncompatibleModelError",
    "LayoutValidationError",
    "LoopCheckpointError",
    "MissingDependencyError",
    "PackingError",
    "RegionValidationError",
    "SchemaValidationError",
    "TypedSchemaError",
    "UnknownAttentionTypeError",
    "UnknownRegionError",
    "VideoFolderError",
]


# ==================================================================================
# root
# ==================================================================================


class CanvasError(Exception):
    """Root of every exception canvas-engineering raises.

    Never raised itself: each subclass also derives from the builtin matching its fault
    (``ValueError`` for invalid declarations and arguments, ``KeyError`` for unknown
    names, ``ImportError`` for a missing optional dependency, ...).
    """


class MissingDependencyError(CanvasError, ImportError):
    """An optional dependency (an extra such as ``[data]`` or ``[viz]``) is not installed."""


class IncompatibleModelError(CanvasError, TypeError):
    """An object lacks the interface a component needs (e.g. a callback given a module without ``set_loops``)."""


# ==================================================================================
# declarations (region, layout, topology, schema, attention types)
# ==================================================================================


class CanvasValidationError(CanvasError, ValueError):
    """Base class: a canvas declaration or an argument breaks a rule."""


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


# ==================================================================================
# typed canvases (typed.py, packing.py)
# ==================================================================================


class TypedSchemaError(CanvasValidationError):
    """A typed object cannot be compiled (no fields, a class that needs arguments, a bad option, ...)."""


class FieldValidationError(TypedSchemaError, RegionValidationError):
    """A :class:`~canvas_engineering.typed.Field` option breaks its rule.

    Attributes:
        path: dotted path of the field (``"arm.joints"``).

    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class PackingError(TypedSchemaError, LayoutValidationError):
    """Fields do not fit on the requested grid.

    Attributes:
        unplaced: paths of the fields that do not fit, in declaration order.

    """

    def __init__(self, message: str, *, unplaced: tuple[str, ...]) -> None:
        super().__init__(message)
        self.unplaced = unplaced


# ==================================================================================
# models (loop_checkpoint.py)
# ==================================================================================


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


# ==================================================================================
# data (datamodules)
# ==================================================================================


class VideoFolderError(CanvasValidationError):
    """The folder or one of its videos cannot be used.

    Attributes:
        path: the folder or the offending file.

    """

    def __init__(self, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.path = str(path)


# ==================================================================================
# training (module.py, program.py, plugin host): moved here by their owners
# ==================================================================================
