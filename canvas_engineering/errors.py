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
from collections.abc import Sequence

import pluggy

__all__ = [
    "BatchValidationError",
    "CanvasError",
    "CanvasValidationError",
    "CheckpointFileError",
    "ConnectionValidationError",
    "DuplicateRegistrationError",
    "EpisodeDataError",
    "FieldValidationError",
    "GraftedSaveError",
    "IncompatibleModelError",
    "LayoutValidationError",
    "LoopCheckpointError",
    "MissingDependencyError",
    "NonFiniteLossError",
    "PackingError",
    "PluginError",
    "PluginHostReentryError",
    "PluginLoadWarning",
    "PluginRegistrationError",
    "PolicyError",
    "PrecisionError",
    "ProgramCycleError",
    "ProgramValidationError",
    "RegionValidationError",
    "SchemaValidationError",
    "TypedSchemaError",
    "UnknownAttentionTypeError",
    "UnknownHookError",
    "UnknownPluginError",
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


class PrecisionError(CanvasValidationError, TypeError):
    """A tensor's floating-point dtype does not fit the module or the training precision.

    Raised at a public entry before any work: tokens of one dtype given to a module whose
    weights are another (outside ``torch.autocast``), or a precision the optimiser cannot
    train in. The message names both dtypes (or the precision) and what to use instead.
    """


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
    """A :class:`~canvas_engineering.typed.fields.Field` option breaks its rule.

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


class CheckpointFileError(CanvasValidationError):
    """A file given as a model checkpoint is missing, damaged, or another kind of file.

    For example a loop checkpoint given to ``CanvasModule.load_from_checkpoint``; the message
    names the file, what is wrong and what to use instead.

    Attributes:
        path: the file.

    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


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


class GraftedSaveError(CanvasValidationError):
    """diffusers' ``save_pretrained`` was called on a grafted transformer, which it cannot reload.

    The message points to ``save_grafted_transformer`` / ``load_grafted_transformer``.
    """


class EpisodeDataError(CanvasValidationError):
    """An episode dataset (a LeRobot folder, arrays or a Hugging Face dataset) cannot be used.

    The message names the file (when there is one), the episode and the feature, and the rule
    broken: a missing or malformed ``meta/info.json``, a declared feature absent from the files,
    a video shorter than its table, a non-finite value, timestamps off the frame rate.

    Attributes:
        path: the offending file, or None for in-memory data.
        episode: the episode index, when one is concerned.
        feature: the feature name, when one is concerned.

    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        episode: int | None = None,
        feature: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.episode = episode
        self.feature = feature


# ==================================================================================
# training (module.py, program.py, plugin host): moved here by their owners
# ==================================================================================

# -- canvas programs (canvas_engineering.program) and CanvasModule (module.py) --------
# Owned by the program/training layer; re-exported from canvas_engineering.program and
# canvas_engineering.training.module so old imports keep working.


class ProgramValidationError(CanvasValidationError):
    """A :class:`~canvas_engineering.CanvasProgram` breaks a rule; the message names the region or connection."""


class ProgramCycleError(ProgramValidationError):
    """An ``acyclic`` program's cross-region connections form a cycle.

    Attributes:
        connections: indices of the connections on the cycle, in order.

    """

    def __init__(self, message: str, connections: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.connections = tuple(connections)


class BatchValidationError(CanvasValidationError):
    """A batch lacks a region or holds a tensor of the wrong shape."""


class NonFiniteLossError(CanvasError, RuntimeError):
    """The training loss became NaN or infinite; training stops before anything is saved."""


class PolicyError(CanvasValidationError):
    """A policy cannot act: a bad observation (unknown or missing feature, wrong shape), argument or environment.

    The message names the feature, argument or environment and the rule broken (with the expected shape).
    """

# -- end of canvas programs and CanvasModule ---------------------------------------------


# ==================================================================================
# plugin host (plugin_host.py, plugin_registry.py); re-exported by plugin_host
# ==================================================================================

#: Environment variable listing entry points or distributions to skip (comma-separated).
#: Defined here so registry errors can point at it; ``plugin_host.BLOCK_ENV`` is this value.
PLUGIN_BLOCK_ENV = "CANVAS_ENGINEERING_BLOCK_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded or one of its hooks failed; it was skipped."""


class PluginError(CanvasError):
    """Base class: the plugin host or a plugin registry refused a request."""


class PluginRegistrationError(PluginError, ValueError):
    """A plugin registers something invalid (an empty name, an in-process name taken twice)."""


class DuplicateRegistrationError(PluginRegistrationError):
    """A name is provided twice for the same kind (attention type, backbone, datamodule).

    Attributes:
        kind: e.g. ``"attention type"``.
        name: the contested name.
        providers: ``(new, existing)`` as ``"distribution version (entry point / module)"``.

    """

    def __init__(self, kind: str, name: str, new: str, existing: str) -> None:
        self.kind = kind
        self.name = name
        self.providers = (new, existing)
        msg = (
            f"{kind} {name!r}: provided by {new} and {existing}; names must be unique. "
            f"Uninstall one of them or block it with {PLUGIN_BLOCK_ENV}=<entry point or distribution>"
        )
        super().__init__(msg)


class UnknownHookError(PluginRegistrationError, pluggy.PluginValidationError):
    """A plugin implements a hook that no hookspec declares (usually a typo).

    Also a :class:`pluggy.PluginValidationError`, like the errors pluggy raises for a
    hookimpl whose arguments do not match its hookspec.

    Attributes:
        plugin: the refused plugin object.

    """

    def __init__(self, plugin: object, message: str) -> None:
        pluggy.PluginValidationError.__init__(self, plugin, message)


class UnknownPluginError(PluginError, KeyError):
    """A name is not registered for its kind; the message lists the available names.

    Attributes:
        kind: e.g. ``"backbone"``.
        name: the requested name.
        available: the registered names, sorted.

    """

    def __init__(self, kind: str, name: object, available: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        listed = ", ".join(self.available) or "(none)"
        msg = (
            f"unknown {kind} {name!r}; available: {listed}. "
            "Install a plugin that provides it (see `canvas-engineering plugins`)"
        )
        super().__init__(msg)

    def __str__(self) -> str:
        # KeyError would repr-quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class PluginHostReentryError(PluginError, RuntimeError):
    """A plugin asked the plugin host for its plugins while its own module was being imported.

    Plugins must register through their hooks, not at import time.
    """
