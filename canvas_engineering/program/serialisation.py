"""Programs to and from JSON: the format version, dicts, text and files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from canvas_engineering._json_source import read_json_source, write_json
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.errors import CanvasValidationError, ProgramValidationError
from canvas_engineering.program._checks import prefix_message

if TYPE_CHECKING:
    from canvas_engineering.program.canvas_program import CanvasProgram

__all__ = ["PROGRAM_FORMAT_VERSION", "program_from_dict", "program_from_json", "program_to_dict", "program_to_json"]

#: Version written into every program file.
PROGRAM_FORMAT_VERSION = 1


def program_to_dict(program: CanvasProgram) -> dict[str, Any]:
    """Return a JSON-ready dict of a program (see :meth:`CanvasProgram.to_dict`)."""
    return {
        "version": PROGRAM_FORMAT_VERSION,
        "schema": program.schema.to_dict(),
        "regions": {n: rp.to_dict() for n, rp in program.regions.items()},
        "connections": [cp.to_dict() for cp in program.connections],
        "acyclic": program.acyclic,
        "metadata": program.metadata,
    }


def program_to_json(program: CanvasProgram, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
    """Return the program as JSON text; with ``path``, also written there atomically."""
    return write_json(program_to_dict(program), path, indent)


def program_from_dict(cls: type[CanvasProgram], data: object, where: str = "program") -> CanvasProgram:
    """Build a ``cls`` from a dict as written by :func:`program_to_dict`.

    Raises:
        ProgramValidationError: naming ``where`` and the first missing or bad key; an error of
            the program itself keeps its class and attributes, its message prefixed by ``where``.

    """
    if not isinstance(data, Mapping):
        msg = f"{where}: must be an object, got {type(data).__name__}"
        raise ProgramValidationError(msg)
    version = data.get("version", PROGRAM_FORMAT_VERSION)
    if version != PROGRAM_FORMAT_VERSION:
        msg = f"{where}: key 'version' is {version!r}; this library reads version {PROGRAM_FORMAT_VERSION}"
        raise ProgramValidationError(msg)
    if "schema" not in data:
        msg = f"{where}: missing key 'schema'"
        raise ProgramValidationError(msg)
    schema = CanvasSchema.from_dict(data["schema"], where=f"{where}: key 'schema'")
    regions = data.get("regions", {})
    connections = data.get("connections", [])
    for key, value, kind in (("regions", regions, Mapping), ("connections", connections, (list, Mapping))):
        if not isinstance(value, kind):
            want = "an object" if kind is Mapping else "a list"
            msg = f"{where}: key {key!r} must be {want}, got {type(value).__name__}"
            raise ProgramValidationError(msg)
    try:
        return cls(
            schema,
            dict(regions),
            connections,
            acyclic=data.get("acyclic", False),
            metadata=data.get("metadata", {}),
        )
    except CanvasValidationError as err:
        prefix_message(err, f"{where}: ")
        raise


def program_from_json(cls: type[CanvasProgram], source: str | os.PathLike[str]) -> CanvasProgram:
    """Load a ``cls`` from JSON text or a file path.

    Raises:
        ProgramValidationError: unreadable file, invalid JSON or a bad key (named).

    """
    data, where = read_json_source(source, "program", ProgramValidationError)
    return program_from_dict(cls, data, where=where)
