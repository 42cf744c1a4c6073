"""Read and write the project's JSON files strictly, with errors that name the source and the rule.

Reading (:func:`read_json_source`) refuses, each with the error class the caller names:

* a file that cannot be read (missing, a folder, no permission) or is larger than
  :data:`MAX_JSON_BYTES`;
* bytes that are not UTF-8 text (a leading UTF-8 byte-order mark is allowed);
* invalid JSON, a key repeated in one object (plain ``json`` keeps the last silently), the
  non-standard tokens ``NaN``, ``Infinity`` and ``-Infinity``, and numbers too large for a
  float (``1e999``);
* nesting deeper than :data:`MAX_JSON_DEPTH` objects and lists.

Writing (:func:`write_json`) refuses NaN and infinities instead of writing the non-standard
tokens, and creates missing parent folders.

The keys each kind of object in a schema or program file may hold are listed once, in
:data:`FILE_KEYS`; :func:`check_keys` refuses any other key, suggesting the closest allowed one.
A key written under another name by another writer is added there as an alias.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "FILE_KEYS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "KeySet",
    "check_keys",
    "dumps_strict",
    "loads_strict",
    "read_json_source",
    "read_tagged_config",
    "write_json",
]

#: Largest JSON file or text read (64 MiB): a schema or program is a few kilobytes.
MAX_JSON_BYTES: Final = 64 * 1024 * 1024
#: Deepest nesting of objects and lists read or written (a schema file nests about 5 levels).
MAX_JSON_DEPTH: Final = 100


@dataclass(frozen=True)
class KeySet:
    """The keys one kind of JSON object may hold.

    Attributes:
        required: keys without a default (missing: an error).
        optional: keys with a documented default.
        aliases: another writer's name -> our name; read as our name.

    """

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every key of our own format, required first."""
        return self.required + self.optional


#: Object kind -> its keys. ``schema*`` objects are read by ``CanvasSchema.from_dict`` (the
#: ``schema`` object of a program file too), ``program*`` ones by ``CanvasProgram.from_dict``.
#: Defaults: a missing ``version`` is the current one; ``metadata`` is ``{}``; every other
#: optional key takes the default of the constructor argument of the same name
#: (``CanvasLayout``, ``RegionSpec``, ``Connection``, ``CanvasProgram``, ``RegionProgram``,
#: ``Clock``, ``ConnectionProgram``).
FILE_KEYS: Final[Mapping[str, KeySet]] = MappingProxyType(
    {
        "schema": KeySet(("layout", "topology"), ("version", "metadata")),
        "schema.layout": KeySet(("T", "H", "W", "d_model", "regions"), ("t_current",)),
        "schema.region": KeySet(
            ("bounds",),
            (
                "period",
                "is_output",
                "loss_weight",
                "semantic_type",
                "semantic_embedding",
                "embedding_model",
                "default_attn",
            ),
        ),
        "schema.topology": KeySet(("connections",)),
        "schema.connection": KeySet(
            ("src", "dst"), ("weight", "t_src", "t_dst", "fn", "temporal_fill", "interpolation_order")
        ),
        "program": KeySet(("schema",), ("version", "regions", "connections", "acyclic", "metadata")),
        "program.region": KeySet((), ("family", "carrier", "clock", "compile_mode", "loss_weight", "constant_value")),
        "program.clock": KeySet((), ("kind", "period", "phase", "threshold", "cooldown", "source", "boundary")),
        "program.connection": KeySet((), ("operator", "write_mode")),
    }
)


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def check_keys(
    obj: Mapping[Any, Any],
    kind: str,
    where: str,
    key: str,
    error: type[Exception],
    *,
    required: bool = True,
) -> dict[str, Any]:
    """Return ``obj`` with aliases renamed to our keys, refusing keys :data:`FILE_KEYS` does not allow.

    Args:
        obj: the object read.
        kind: its entry in :data:`FILE_KEYS`.
        where: the source, for messages (``"schema file 'robot.json'"``).
        key: the object's own key path (``"layout.regions.arm"``; ``""``: the top level).
        error: the exception class raised.
        required: also refuse a missing required key (``False``: the caller reads them in its
            own order and reports a missing one itself).

    Raises:
        error: an unknown key (naming it, the closest allowed key and every allowed key), a
            key given both under its name and an alias, or a missing required key.

    """
    keys = FILE_KEYS[kind]
    allowed = keys.allowed
    out: dict[str, Any] = {}
    for name, value in obj.items():
        canonical = keys.aliases.get(name, name) if isinstance(name, str) else name
        if canonical not in allowed:
            close = difflib.get_close_matches(str(name), [*allowed, *keys.aliases], n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = (
                f"{where}: unknown key {_join(key, str(name))!r}{hint}; keys allowed in "
                f"{repr(key) if key else 'the top level'}: {', '.join(allowed)}"
            )
            raise error(msg)
        if canonical in out:
            msg = f"{where}: key {_join(key, canonical)!r} is given twice (as {canonical!r} and as an alias)"
            raise error(msg)
        out[canonical] = value
    if required:
        for name in keys.required:
            if name not in out:
                msg = f"{where}: missing key {_join(key, name)!r}"
                raise error(msg)
    return out


class _RuleError(Exception):
    """A strictness rule broken while ``json.loads`` runs (converted to the caller's error class)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                siblings = ", ".join(repr(k) for k in out)
                msg = f"duplicate key {name!r} in the object with keys {siblings} (each key may appear once)"
                raise _RuleError(msg)
            seen.add(name)
    return out


def _constant(token: str) -> float:
    msg = f"non-finite number {token} (JSON numbers must be finite; NaN and Infinity are not JSON)"
    raise _RuleError(msg)


def _float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        msg = f"number {token} is out of range for a 64-bit float"
        raise _RuleError(msg)
    return value


def _too_deep(data: Any) -> bool:
    """Whether ``data`` nests more than :data:`MAX_JSON_DEPTH` dicts/lists (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _too_deep_message(where: str) -> str:
    return f"{where}: nested more than {MAX_JSON_DEPTH} levels of objects and lists (MAX_JSON_DEPTH)"


def loads_strict(text: str, where: str, error: type[Exception]) -> Any:
    """Parse JSON ``text`` by the rules of the module documentation; errors name ``where``.

    Raises:
        error: invalid JSON, a duplicate key, a non-finite number or too deep nesting.

    """
    if len(text) > MAX_JSON_BYTES:
        msg = f"{where}: {len(text)} characters; the limit is {MAX_JSON_BYTES} (MAX_JSON_BYTES)"
        raise error(msg)
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
    except json.JSONDecodeError as err:
        msg = f"{where}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        raise error(msg) from None
    except _RuleError as err:
        raise error(f"{where}: {err}") from None
    except RecursionError:
        raise error(_too_deep_message(where)) from None
    except ValueError as err:  # e.g. an integer longer than Python converts (sys.set_int_max_str_digits)
        raise error(f"{where}: invalid JSON: {err}") from None
    if _too_deep(data):
        raise error(_too_deep_message(where))
    return data


def read_json_source(source: str | os.PathLike[str], kind: str, error: type[Exception]) -> tuple[Any, str]:
    """Parse ``source`` (JSON text, or a path to a JSON file); return ``(data, where)``.

    Text starting with ``{`` or ``[`` (after white space) is JSON; any other string is a path.
    ``where`` names the source for later messages (``"schema file 'robot.json'"``).

    Raises:
        error: the source is neither text nor a path, the file cannot be read, or the content
            breaks a rule of the module documentation (naming where and which rule).

    """
    if not isinstance(source, (str, os.PathLike)):
        msg = f"{kind} source must be JSON text or a file path, got {type(source).__name__}"
        raise error(msg)
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        return loads_strict(source, f"{kind} JSON", error), f"{kind} JSON"
    path = Path(source)
    where = f"{kind} file {str(path)!r}"
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)  # bounded even for a special file that never ends
    except OSError as err:
        msg = f"{where}: cannot read: {err.strerror or err}"
        raise error(msg) from None
    except ValueError as err:  # e.g. a NUL byte in the path
        msg = f"{where}: cannot read: {err}"
        raise error(msg) from None
    if len(raw) > MAX_JSON_BYTES:
        msg = f"{where}: larger than {MAX_JSON_BYTES} bytes (MAX_JSON_BYTES); not a schema or program file"
        raise error(msg)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        msg = (
            f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}: {err.reason}); "
            "JSON files must be UTF-8"
        )
        raise error(msg) from None
    return loads_strict(text, where, error), where


def read_tagged_config(
    path: str | os.PathLike[str],
    fmt: str,
    version: int,
    keys: frozenset[str] | set[str],
    error: Callable[[str], Exception],
) -> dict[str, Any]:
    """Read a saved folder's JSON config strictly; check its ``format`` tag, ``format_version`` and keys.

    Raises:
        error: (called with the message, which names the file) the file is missing or breaks a
            rule of the module documentation; it is another format or version; it holds a key
            outside ``keys``.

    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing (not a folder written by canvas-engineering?)")

    class _Refused(ValueError):
        pass

    try:
        config, _ = read_json_source(path, "config", _Refused)
    except _Refused as err:
        raise error(f"{path}: cannot read the config ({err})") from None
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise error(f"{path}: not a {fmt} config (expected \"format\": {fmt!r})")
    unknown = set(config) - set(keys)
    if unknown:
        raise error(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(keys)}")
    if config.get("format_version") != version:
        raise error(f"{path}: format_version {config.get('format_version')!r} is not {version}, the one read here")
    return config


def _first_non_finite(data: Any) -> tuple[str, float] | None:
    """Return the key path and value of the first NaN or infinity in ``data`` (``None``: there is none)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return key or "(root)", value
        if isinstance(value, Mapping):
            stack.extend((_join(key, str(k)), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{key}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def dumps_strict(data: Any, what: str, error: type[Exception], indent: int | None = 2) -> str:
    """Return ``data`` as JSON text that :func:`loads_strict` reads back.

    Raises:
        error: ``data`` nests more than :data:`MAX_JSON_DEPTH` levels, holds NaN or an infinity
            (naming its key) or a value JSON cannot hold; the message starts with ``what``.

    """
    if _too_deep(data):
        msg = f"{what}: nested more than {MAX_JSON_DEPTH} levels of objects and lists (MAX_JSON_DEPTH)"
        raise error(msg)
    found = _first_non_finite(data)
    if found is not None:
        msg = f"{what}: key {found[0]!r} is {found[1]!r}; JSON has no NaN or Infinity (store a finite number, or null)"
        raise error(msg)
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise error(f"{what}: {err}") from None


def write_json(
    data: Any,
    path: str | os.PathLike[str] | None = None,
    indent: int = 2,
    *,
    kind: str = "JSON",
    error: type[Exception] = ValueError,
) -> str:
    """Return ``data`` as JSON text; with ``path``, also written there atomically (temp file + rename).

    Missing parent folders of ``path`` are created.

    Raises:
        error: ``data`` breaks a rule of :func:`dumps_strict` (the message names ``kind``, the
            target and the key); nothing is written.
        OSError: the file cannot be written (naming ``path``).

    """
    from canvas_engineering._atomic import atomic_write_text

    target = f"file {str(path)!r}" if path is not None else "JSON text"
    text = dumps_strict(data, f"{kind}: cannot write {target}", error, indent)
    if path is not None:
        atomic_write_text(path, text + "\n")
    return text
