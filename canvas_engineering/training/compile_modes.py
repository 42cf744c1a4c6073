"""Compile modes: whether a region learns, is folded out, or is returned, one object per mode.

:func:`compile_mode_for` turns a program's compile-mode name into its object once, when a
:class:`~canvas_engineering.CanvasModule` is built; the module asks the object.

=========  =========  ============  ===============  ===========
mode       has_codec  trains_codec  detaches_tokens  is_exported
=========  =========  ============  ===============  ===========
runtime    yes        yes           no               no
freeze     yes        no            yes              no
constant   no         no            no               no
export     yes        yes           no               yes
=========  =========  ============  ===============  ===========

A region without a codec is a fixed buffer (``RegionProgram.constant_value``): never encoded,
noised, decoded or lossed, and never run as an attention query.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

from canvas_engineering.errors import ProgramValidationError

__all__ = [
    "COMPILE_MODE_TYPES",
    "CompileMode",
    "ConstantMode",
    "ExportMode",
    "FreezeMode",
    "RuntimeMode",
    "compile_mode_for",
]


class CompileMode:
    """How a region's codec is compiled (the base is the plain ``runtime`` behaviour)."""

    #: the program's name for this mode
    name: ClassVar[str] = "runtime"
    #: the region has an encoder and a decoder (``False``: fixed content, folded out)
    has_codec: ClassVar[bool] = True
    #: its encoder and decoder take gradients
    trains_codec: ClassVar[bool] = True
    #: its encoded tokens are detached (no gradient flows back through them)
    detaches_tokens: ClassVar[bool] = False
    #: ``predict_step`` returns it even when nothing of it is predicted
    is_exported: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RuntimeMode(CompileMode):
    """The region is encoded, predicted and trained normally."""


class FreezeMode(CompileMode):
    """The region's encoder and decoder get no gradient and its tokens are detached."""

    name = "freeze"
    trains_codec = False
    detaches_tokens = True


class ConstantMode(CompileMode):
    """The region is a fixed buffer: no codec, never predicted, never a query."""

    name = "constant"
    has_codec = False
    trains_codec = False


class ExportMode(CompileMode):
    """Like runtime; ``predict_step`` returns the region even if it is an input."""

    name = "export"
    is_exported = True


#: Compile-mode name -> its class.
COMPILE_MODE_TYPES: MappingProxyType[str, type[CompileMode]] = MappingProxyType(
    {cls.name: cls for cls in (RuntimeMode, FreezeMode, ConstantMode, ExportMode)}
)


def compile_mode_for(name: str) -> CompileMode:
    """Return the compile-mode object for a program's compile-mode ``name``.

    Raises:
        ProgramValidationError: an unknown name (the message lists the known ones).

    """
    if name not in COMPILE_MODE_TYPES:
        msg = f"unknown compile mode {name!r}; choose one of {', '.join(COMPILE_MODE_TYPES)}"
        raise ProgramValidationError(msg)
    return COMPILE_MODE_TYPES[name]()
