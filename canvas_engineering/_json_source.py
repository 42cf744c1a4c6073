"""Read JSON given either as text or as a file path, with errors that name the source."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json_source", "write_json"]


def read_json_source(source: str | os.PathLike[str], kind: str, error: type[Exception]) -> tuple[Any, str]:
    """Parse ``source`` (JSON text, or a path to a JSON file); return ``(data, where)``.

    ``where`` names the source for later messages (``"schema file 'robot.json'"``).

    Raises:
        error: the file cannot be read or the text is not valid JSON (naming where and why).

    """
    where = f"{kind} JSON"
    if isinstance(source, os.PathLike) or not str(source).lstrip().startswith(("{", "[")):
        path = Path(source)
        where = f"{kind} file {str(path)!r}"
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as err:
            msg = f"{where}: cannot read: {err.strerror or err}"
            raise error(msg) from None
    try:
        return json.loads(source), where
    except json.JSONDecodeError as err:
        msg = f"{where}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        raise error(msg) from None


def write_json(data: Any, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
    """Return ``data`` as JSON text; with ``path``, also written there atomically (temp file + rename)."""
    from canvas_engineering._atomic import atomic_write_text

    text = json.dumps(data, indent=indent)
    if path is not None:
        atomic_write_text(path, text + "\n")
    return text
