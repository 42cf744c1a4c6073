"""Programs to and from JSON: the format version, dicts, text and files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from canvas_engineering._json_source import check_keys, read_json_source, write_json
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.errors import CanvasValidationError, ProgramValidationError, SchemaValidationError
from canvas_engineering.program._checks import prefix_message
from canvas_engineering.validation import is_int

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
    """Return the program as JSON text; with ``path``, also written there atomically.

    Missing parent folders of ``path`` are created.

    Raises:
        ProgramValidationError: the metadata holds NaN or an infinity (JSON has none; the key is
            named); nothing is written.
        OSError: ``path`` cannot be written (the message names ``path``).

    """
    return write_json(program_to_dict(program), path, indent, kind="program", error=ProgramValidationError)


def _keys(value: Mapping[str, Any], kind: str, where: str, key: str) -> dict[str, Any]:
    return check_keys(value, kind, where, key, ProgramValidationError)


def _region_programs(regions: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check the keys of each region program (and its clock) given as an object; others pass as they are."""
    out: dict[str, Any] = {}
    for name, value in regions.items():
        if isinstance(value, Mapping):
            value = _keys(value, "program.region", where, f"regions.{name}")
            if isinstance(value.get("clock"), Mapping):
                value["clock"] = _keys(value["clock"], "program.clock", where, f"regions.{name}.clock")
        out[name] = value
    return out


def _connection_programs(connections: list[Any] | Mapping[Any, Any], where: str) -> list[Any] | dict[Any, Any]:
    """Check the keys of each connection program given as an object; others pass as they are."""
    if isinstance(connections, Mapping):
        return {
            k: _keys(v, "program.connection", where, f"connections.{k}") if isinstance(v, Mapping) else v
            for k, v in connections.items()
        }
    return [
        _keys(v, "program.connection", where, f"connections[{i}]") if isinstance(v, Mapping) else v
        for i, v in enumerate(connections)
    ]


def program_from_dict(cls: type[CanvasProgram], data: object, where: str = "program") -> CanvasProgram:
    """Build a ``cls`` from a dict as written by :func:`program_to_dict`.

    Keys (``_json_source.FILE_KEYS`` lists them): ``schema`` is required (read by
    :meth:`CanvasSchema.from_dict <canvas_engineering.CanvasSchema.from_dict>`); ``version``
    defaults to the current one, ``regions`` to ``{}`` (every region ``RegionProgram()``),
    ``connections`` to ``[]`` (every connection ``ConnectionProgram()``), ``acyclic`` to
    ``false`` and ``metadata`` to ``{}``; a region program, its clock and a connection program
    given as objects may hold their class's fields, each optional. Any other key is an error.

    Raises:
        ProgramValidationError: naming ``where`` and the first unknown (with the closest
            allowed key), missing or bad key, the schema's included; an error of the program
            itself keeps its class and attributes, its message prefixed by ``where``.

    """
    if not isinstance(data, Mapping):
        msg = f"{where}: must be an object, got {type(data).__name__}"
        raise ProgramValidationError(msg)
    data = check_keys(data, "program", where, "", ProgramValidationError, required=False)
    version = data.get("version", PROGRAM_FORMAT_VERSION)
    if not is_int(version) or version != PROGRAM_FORMAT_VERSION:
        msg = f"{where}: key 'version' is {version!r}; this library reads version {PROGRAM_FORMAT_VERSION}"
        raise ProgramValidationError(msg)
    if "schema" not in data:
        msg = f"{where}: missing key 'schema'"
        raise ProgramValidationError(msg)
    try:
        schema = CanvasSchema.from_dict(data["schema"], where=f"{where}: key 'schema'")
    except SchemaValidationError as err:
        raise ProgramValidationError(str(err)) from err
    regions = data.get("regions", {})
    connections = data.get("connections", [])
    for key, value, kind in (("regions", regions, Mapping), ("connections", connections, (list, Mapping))):
        if not isinstance(value, kind):
            want = "an object" if kind is Mapping else "a list"
            msg = f"{where}: key {key!r} must be {want}, got {type(value).__name__}"
            raise ProgramValidationError(msg)
    regions = _region_programs(regions, where)
    connections = _connection_programs(connections, where)
    try:
        return cls(
            schema,
            regions,
            connections,
            acyclic=data.get("acyclic", False),
            metadata=data.get("metadata", {}),
        )
    except CanvasValidationError as err:
        prefix_message(err, f"{where}: ")
        raise


def program_from_json(cls: type[CanvasProgram], source: str | os.PathLike[str]) -> CanvasProgram:
    """Load a ``cls`` from JSON text or a file path (strictly: see :func:`program_from_dict`).

    Raises:
        ProgramValidationError: naming the file (or ``program JSON``) and the rule broken: the
            file cannot be read, is larger than 64 MiB or not UTF-8; the JSON is invalid,
            repeats a key in one object, holds NaN or Infinity or nests more than 100 levels;
            or a key is unknown (with the closest allowed key), missing or bad.

    """
    data, where = read_json_source(source, "program", ProgramValidationError)
    return program_from_dict(cls, data, where=where)
