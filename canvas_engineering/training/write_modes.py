"""Write modes: how a connection's output enters its query positions, one object per mode.

The attention layer (:class:`~canvas_engineering.CanvasAttention`) combines group outputs
by these names; the training layer only needs to know whether a backbone must be told:
the plain sum (``add``) is what every backbone does, ``gate`` and ``replace`` need a
backbone that accepts ``write_modes`` (``canvas_dit`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import ClassVar

from canvas_engineering.errors import ProgramValidationError

__all__ = [
    "WRITE_MODE_TYPES",
    "AddWrite",
    "GateWrite",
    "ReplaceWrite",
    "WriteMode",
    "backbone_write_modes",
    "write_mode_for",
]


class WriteMode:
    """How one connection's output is combined with the others' (the base is the plain sum)."""

    #: the program's name for this mode
    name: ClassVar[str] = "add"
    #: the backbone must be given the write modes (the plain sum needs nothing)
    needs_backbone_support: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AddWrite(WriteMode):
    """Summed with the other connections' outputs."""


class GateWrite(WriteMode):
    """Summed after a learned sigmoid gate (one scalar per attention group, starting at 0.5)."""

    name = "gate"
    needs_backbone_support = True


class ReplaceWrite(WriteMode):
    """At the positions it writes, replaces the sum of the other connections' outputs."""

    name = "replace"
    needs_backbone_support = True


#: Write-mode name -> its class.
WRITE_MODE_TYPES: MappingProxyType[str, type[WriteMode]] = MappingProxyType(
    {cls.name: cls for cls in (AddWrite, GateWrite, ReplaceWrite)}
)


def write_mode_for(name: str) -> WriteMode:
    """Return the write-mode object for a program's write-mode ``name``.

    Raises:
        ProgramValidationError: an unknown name (the message lists the known ones).

    """
    if name not in WRITE_MODE_TYPES:
        msg = f"unknown write mode {name!r}; choose one of {', '.join(WRITE_MODE_TYPES)}"
        raise ProgramValidationError(msg)
    return WRITE_MODE_TYPES[name]()


def backbone_write_modes(names: Sequence[str]) -> list[str] | None:
    """Return the ``write_modes`` to hand a backbone: ``None`` when every mode is the plain sum."""
    if any(write_mode_for(n).needs_backbone_support for n in names):
        return list(names)
    return None
