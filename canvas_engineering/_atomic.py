"""Write files so that a failure never leaves a half-written or lost file.

A write goes to a temporary file beside the target, named ``.{target name}.tmp-{host}-{pid}-{random}``
(``host``: 8 hex digits identifying the machine), which is flushed, synced and renamed over the
target. A writer killed between creating and renaming its temporary file (``SIGKILL``, power loss)
cannot remove it; the next write to the same target does: it removes every temporary file of that
target whose writer process is gone (same machine, process id no longer running) or which has not
been modified for :data:`STALE_AFTER_SECONDS` (a writer on another machine, or a reused process id).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Final, NoReturn

__all__ = ["STALE_AFTER_SECONDS", "atomic_write_bytes", "atomic_write_text", "temp_files_of"]

#: A temporary file untouched for this long is stale even when its writer's process id is running
#: (a writer keeps modifying its file until it renames it; an hour-old one was abandoned).
STALE_AFTER_SECONDS: Final = 3600.0

_TEMP = re.compile(r"\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]+")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_files_of(path: str | os.PathLike[str]) -> list[Path]:
    """Return the temporary files of writes to ``path`` that exist now (any writer's, live or dead)."""
    path = Path(path)
    prefix = f".{path.name}"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(
        path.parent / name
        for name in names
        if name.startswith(prefix) and _TEMP.fullmatch(name, len(prefix)) is not None
    )


def _writer_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists under another user, or cannot tell: keep its file
    return True


def _remove_stale_temp_files(path: Path) -> None:
    """Remove the temporary files killed writers left beside ``path`` (never fails the write)."""
    host, now = _host(), time.time()
    prefix = f".{path.name}"
    for tmp in temp_files_of(path):
        match = _TEMP.fullmatch(tmp.name, len(prefix))
        if match is None:
            continue
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue  # already gone (renamed by its writer, or removed by another cleaner)
        pid = int(match["pid"])
        dead = match["host"] == host and pid != os.getpid() and not _writer_running(pid)
        if dead or age > STALE_AFTER_SECONDS:
            try:
                tmp.unlink()
            except OSError:
                pass  # a race with another cleaner or a read-only folder: the write itself still proceeds


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    Missing parent folders are created. Temporary files that killed writers left for the same
    target are removed first (see the module documentation). On failure the previous content
    of ``path`` (if any) is untouched and this write's temporary file is removed.

    Raises:
        OSError: the folder or the file cannot be written; the message names ``path``.

    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(path)
        # O_EXCL: never write through someone else's file; mode 0o666 minus the umask, like open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        _raise_naming(err, path, tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            _raise_naming(err, path, tmp)
        raise
    return path


def _raise_naming(err: OSError, path: Path, tmp: Path) -> NoReturn:
    """Raise ``err`` naming the target ``path``: its temporary file means nothing to a caller."""
    if err.errno is None:
        raise err
    code, reason = err.errno, err.strerror or str(err)
    if isinstance(err, FileExistsError) and str(err.filename) != str(tmp):  # mkdir met a file
        code, reason = errno.ENOTDIR, f"{err.filename} is not a folder"
    elif err.filename is not None and str(err.filename) not in (str(path), str(tmp)):
        reason = f"{reason} (at {err.filename})"
    raise OSError(code, reason, str(path)) from err


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))
