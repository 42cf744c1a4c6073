"""Loop-only checkpoints: save and restore just what a looped, mostly frozen model trains.

A grafted backbone is frozen except for its loop embeddings (and whatever the freeze
strategy leaves trainable), so a checkpoint of those parameters is a small fraction of the
model (the seed: "~0.1% of model"). The file is a ``torch.save`` of plain data and tensors::

    {
        "format": "canvas_engineering.models.loop_checkpoint",
        "format_version": 2,
        "config": {...},          # what load_loop_checkpoint checks (see save_loop_checkpoint)
        "state_dict": {qualified parameter name: tensor},
    }

so it loads with ``torch.load(..., weights_only=True)``: nothing in it can run code.

Integrity: the file (a zip archive) is sealed with the SHA-256 of all its bytes, written as
the archive's comment (``canvas-engineering sha256 <hex>``, the last 90 bytes; zip readers and
``torch.load`` ignore it). :func:`load_loop_checkpoint` recomputes it and refuses a file whose
bytes changed, and refuses weights holding NaN or infinities unless asked not to. Files of
``format_version`` 1 (before the seal) load without the integrity check.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from canvas_engineering._atomic import atomic_write_bytes
from canvas_engineering._version import __version__
from canvas_engineering.errors import CheckpointFileError, IncompatibleModelError, LoopCheckpointError
from canvas_engineering.models.looped import LoopedBlockWrapper

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SEAL_PREFIX",
    "check_finite_weights",
    "check_lightning_checkpoint",
    "load_loop_checkpoint",
    "non_finite_parameter",
    "save_loop_checkpoint",
    "seal_checkpoint_bytes",
]

#: value of the ``"format"`` key of a loop checkpoint
FORMAT: Final = "canvas_engineering.models.loop_checkpoint"
#: version of the file layout; newer files are refused by older readers (2: sealed with a SHA-256)
FORMAT_VERSION: Final = 2
#: start of the zip comment holding a sealed file's SHA-256 (64 hex digits follow)
SEAL_PREFIX: Final = b"canvas-engineering sha256 "

_SEAL_SIZE: Final = len(SEAL_PREFIX) + 64
_ZIP: Final = b"PK\x03\x04"  # zip local file header: the first bytes of every torch.save archive
_EOCD: Final = b"PK\x05\x06"  # zip end-of-central-directory record (22 bytes, then the comment)
_PAYLOAD_KEYS: Final = frozenset({"format", "format_version", "config", "state_dict"})
_PLAIN = (str, int, float, bool, type(None))


class _SealMismatch(Exception):
    """The SHA-256 stored in a sealed file does not match its bytes (callers raise their own error)."""


def seal_checkpoint_bytes(data: bytes) -> bytes:
    """Return ``torch.save`` output ``data`` with its SHA-256 added as the zip archive's comment.

    The digest covers every byte before the comment (the archive, its comment length
    included), so any changed, missing or added byte is detected by
    :func:`_verify_seal`. ``torch.load`` reads the result like the original.

    Raises:
        ValueError: ``data`` is not a zip archive without a comment (``torch.save`` writes one).

    """
    if len(data) < 22 or data[-22:-18] != _EOCD or data[-2:] != b"\0\0":
        msg = "seal_checkpoint_bytes: data must be a zip archive without a comment (torch.save output)"
        raise ValueError(msg)
    body = data[:-2] + struct.pack("<H", _SEAL_SIZE)
    return body + SEAL_PREFIX + hashlib.sha256(body).hexdigest().encode("ascii")


def _verify_seal(path: str | os.PathLike[str]) -> bool:
    """Check the seal of :func:`seal_checkpoint_bytes`; return whether the file has one.

    Reads the last bytes only when the file is not sealed; hashes it in 1 MiB chunks when it is.

    Raises:
        _SealMismatch: the file is sealed but its bytes do not hash to the stored digest.
        OSError: the file cannot be read.

    """
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < _SEAL_SIZE + 22:
            return False
        fh.seek(size - _SEAL_SIZE)
        seal = fh.read(_SEAL_SIZE)
        if not seal.startswith(SEAL_PREFIX):
            return False
        fh.seek(0)
        digest = hashlib.sha256()
        remaining = size - _SEAL_SIZE
        while remaining:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    stored = seal[len(SEAL_PREFIX) :].decode("ascii", "replace")
    if remaining or digest.hexdigest() != stored:
        msg = f"stored sha256 {stored[:16]}..., its bytes hash to {digest.hexdigest()[:16]}..."
        raise _SealMismatch(msg)
    return True


def _loop_blocks(model: nn.Module) -> dict[str, LoopedBlockWrapper]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoopedBlockWrapper)}


def _freeze_strategy(model: nn.Module) -> str | None:
    """Return the ``freeze_strategy`` attribute of the model or of its first submodule recording one."""
    for module in model.modules():
        value = getattr(module, "freeze_strategy", None)
        if value is not None:
            return str(value)
    return None


def _check_plain(value: object, where: str) -> None:
    """Refuse values ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, _PLAIN) or torch.is_tensor(value):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                msg = f"save_loop_checkpoint: key {key!r} of {where} must be a string"
                raise LoopCheckpointError(msg)
            _check_plain(item, f"{where}[{key!r}]")
        return
    msg = (
        f"save_loop_checkpoint: {where} is a {type(value).__name__}; "
        "only str, int, float, bool, None, tensors, lists, tuples and dicts with string keys "
        "can be read back with weights_only=True"
    )
    raise LoopCheckpointError(msg)


def save_loop_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], extra_config: Mapping[str, Any] | None = None
) -> Path:
    """Save the loop parameters and every other trainable parameter of ``model`` to ``path``.

    Saved: every :class:`~canvas_engineering.models.looped.LoopedBlockWrapper` loop parameter
    (trainable or not) plus every parameter with ``requires_grad``, keyed by qualified name,
    and a ``config`` with what :func:`load_loop_checkpoint` checks: each saved parameter's
    shape, the loop parameter names, ``max_loops`` per looped block, the library version,
    the model's ``freeze_strategy`` attribute (or a submodule's; ``None`` when unrecorded),
    parameter counts, and ``extra_config`` under ``"extra"``.

    The file is written to a temporary file beside ``path`` and renamed over it, so a failed
    save leaves a previous checkpoint intact. Missing parent directories are created.

    Args:
        model: the model (a backbone, or any module containing one).
        path: destination file.
        extra_config: plain data to store alongside (strings, numbers, bools, ``None``,
            tensors, and lists/tuples/dicts of them).

    The file is sealed with its SHA-256 (see the module documentation).

    Returns:
        The path written.

    Raises:
        LoopCheckpointError: ``path`` is not a path, or ``extra_config`` holds a value
            ``weights_only`` loading refuses.
        IncompatibleModelError: ``model`` is not a ``torch.nn.Module``.
        OSError: the file cannot be written (the message names ``path``).

    """
    _check_model(model, "save_loop_checkpoint")
    path = _check_path(path, "save_loop_checkpoint")
    extra = dict(extra_config or {})
    _check_plain(extra, "extra_config")
    blocks = _loop_blocks(model)
    loop_ids = {id(p) for block in blocks.values() for p in block.loop_parameters()}
    named = list(model.named_parameters())
    state = {
        name: p.detach().to("cpu", copy=True)  # a copy: never serialise a larger shared storage
        for name, p in named
        if id(p) in loop_ids or p.requires_grad
    }
    config = {
        "library_version": __version__,
        "model_class": type(model).__qualname__,
        "parameters": {name: list(t.shape) for name, t in state.items()},
        "loop_parameters": [name for name, p in named if id(p) in loop_ids],
        "max_loops": {name: block.max_loops for name, block in blocks.items()},
        "freeze_strategy": _freeze_strategy(model),
        "num_model_parameters": sum(p.numel() for _, p in named),
        "num_saved_parameters": sum(t.numel() for t in state.values()),
        "extra": extra,
    }
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config, "state_dict": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, seal_checkpoint_bytes(buffer.getvalue()))


def _check_model(model: object, caller: str) -> None:
    if not isinstance(model, nn.Module):
        msg = f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}"
        raise IncompatibleModelError(msg)


def _check_path(path: object, caller: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        msg = f"{caller}: path must be a file path (str or os.PathLike), got {path!r}"
        raise LoopCheckpointError(msg, path=None)
    return Path(path)


def non_finite_parameter(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """Return ``(name, non-finite count, numel)`` of the first floating tensor holding NaN or an infinity.

    ``None``: every floating (and complex) tensor is finite; integer and bool tensors always are.
    """
    for name, tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                return name, bad, tensor.numel()
    return None


def _fail(where: str, path: Path, what: str) -> LoopCheckpointError:
    return LoopCheckpointError(f"{where}: {what}", path=str(path))


def _read(path: Path, where: str) -> dict[str, Any]:
    """Verify the seal, load weights-only and check the layout of the payload; every failure names ``path``."""
    try:
        sealed = _verify_seal(path)
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise _fail(where, path, f"cannot read: {exc.strerror or exc}") from exc
    except _SealMismatch as exc:
        what = f"damaged: its bytes changed since it was written (SHA-256 seal mismatch: {exc}); restore it from a copy"
        raise _fail(where, path, what) from exc
    if head != _ZIP:  # save_loop_checkpoint has always written torch.save's zip archives
        what = f"unreadable, damaged or not a torch.save file (it does not start as a zip archive: {head!r})"
        raise _fail(where, path, what)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = (
            "refused to load, it holds more than tensors and plain data or is damaged "
            f"(torch.load weights_only=True: {first}). Only load files you trust, and not with this function"
        )
        raise _fail(where, path, what) from exc
    except Exception as exc:  # any other failure to parse these bytes: damaged or not a checkpoint
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        what = f"unreadable, damaged or not a torch.save file ({type(exc).__name__}: {first})"
        raise _fail(where, path, what) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _fail(where, path, f"not a canvas-engineering loop checkpoint (no {FORMAT!r} format key)")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, path, f"format_version {version!r} must be an integer >= 1; the file is damaged")
    if version > FORMAT_VERSION:
        what = (
            f"format_version {version!r} is newer than this library reads ({FORMAT_VERSION}); "
            "upgrade canvas-engineering"
        )
        raise _fail(where, path, what)
    if version >= 2 and not sealed:
        what = "damaged: format_version 2 files end with a SHA-256 seal and this one has none (truncated or altered)"
        raise _fail(where, path, what)
    unknown = sorted(str(k) for k in payload if k not in _PAYLOAD_KEYS)
    if unknown:
        raise _fail(where, path, f"unexpected top-level key {unknown[0]!r}; the file is damaged or not ours")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict):
        raise _fail(where, path, f"key 'config' must be a dict, got {type(config).__name__}")
    if not isinstance(state, dict):
        raise _fail(where, path, f"key 'state_dict' must be a dict, got {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(name, str):
            raise _fail(where, path, f"state_dict key {name!r} must be a parameter name (str)")
        if not torch.is_tensor(value) or value.layout != torch.strided:
            kind = type(value).__name__ if not torch.is_tensor(value) else f"{value.layout} tensor"
            raise _fail(where, path, f"state_dict[{name!r}] must be a dense tensor, got {kind}")
    loops = config.get("max_loops", {})
    if not isinstance(loops, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in loops.items()
    ):
        raise _fail(where, path, f"config key 'max_loops' must map block names to integers, got {loops!r}")
    return payload


def load_loop_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = True, *, allow_non_finite: bool = False
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_loop_checkpoint` into ``model``'s parameters.

    Everything is checked before any parameter changes. Every saved parameter must exist in
    the model with the same shape (a shape mismatch is an error even when not ``strict``).
    With ``strict``, every loop parameter of the model must be in the file and every looped
    block must have the saved ``max_loops``; without it, names on one side only are skipped
    and reported. Values are copied in place without recording gradients (dtype and device
    follow the model's parameters).

    The file's SHA-256 seal is verified first (files of ``format_version`` 1 have none), and
    a saved tensor holding NaN or an infinity is refused unless ``allow_non_finite``.

    Args:
        model: the model to restore into.
        path: a file written by :func:`save_loop_checkpoint`.
        strict: refuse names present on one side only.
        allow_non_finite: load NaN and infinite values too (e.g. to inspect a diverged run).

    Returns:
        The saved ``config`` (see :func:`save_loop_checkpoint`; ``extra_config`` is under
        ``"extra"``) plus ``"missing_keys"`` (model loop parameters not in the file) and
        ``"unexpected_keys"`` (saved names not in the model); both empty when ``strict``.

    Raises:
        LoopCheckpointError: naming the file and what is wrong: it is missing, a folder or
            unreadable; damaged (seal mismatch, truncated, not a torch file); refused by
            ``weights_only`` loading; not a loop checkpoint or laid out wrongly; holds
            non-finite weights (naming the parameter); or does not fit the model (the message
            names the first offending parameter and, for a shape mismatch, both shapes).
        IncompatibleModelError: ``model`` is not a ``torch.nn.Module``.

    """
    _check_model(model, "load_loop_checkpoint")
    path = _check_path(path, "load_loop_checkpoint")
    where = f"loop checkpoint {str(path)!r}"
    payload = _read(path, where)
    config, state = dict(payload["config"]), payload["state_dict"]
    if not allow_non_finite and (bad := non_finite_parameter(state.items())) is not None:
        name, count, numel = bad
        msg = (
            f"{where}: parameter {name!r} holds {count} non-finite values (NaN or infinity) of {numel}; "
            "the run that saved it diverged. Pass allow_non_finite=True to load it anyway"
        )
        raise LoopCheckpointError(msg, path=str(path), parameter=name)
    params = dict(model.named_parameters())
    unexpected: list[str] = []
    for name, value in state.items():
        if name not in params:
            if strict:
                msg = (
                    f"{where}: parameter {name!r} is in the checkpoint but not in the model "
                    f"({type(model).__name__}); pass strict=False to skip it"
                )
                raise LoopCheckpointError(msg, path=str(path), parameter=name)
            unexpected.append(name)
            continue
        if tuple(value.shape) != tuple(params[name].shape):
            msg = (
                f"{where}: parameter {name!r} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(params[name].shape)} in the model; the model is built differently "
                "(d_model, max_loops, depth ...) from the one that was saved"
            )
            raise LoopCheckpointError(msg, path=str(path), parameter=name)
    blocks = _loop_blocks(model)
    loop_ids = {id(p) for block in blocks.values() for p in block.loop_parameters()}
    missing = [name for name, p in params.items() if id(p) in loop_ids and name not in state]
    if strict:
        if missing:
            msg = (
                f"{where}: loop parameter {missing[0]!r} of the model is missing from the checkpoint; "
                "pass strict=False to keep its current value"
            )
            raise LoopCheckpointError(msg, path=str(path), parameter=missing[0])
        saved_loops = config.get("max_loops", {})
        for name, block in blocks.items():
            if name in saved_loops and saved_loops[name] != block.max_loops:
                msg = (
                    f"{where}: looped block {name!r} has max_loops={saved_loops[name]} in the checkpoint "
                    f"but max_loops={block.max_loops} in the model"
                )
                raise LoopCheckpointError(msg, path=str(path), parameter=name)
    with torch.no_grad():
        for name, value in state.items():
            if name in params:
                params[name].copy_(value)
    config["missing_keys"] = missing
    config["unexpected_keys"] = unexpected
    return config


# -- Lightning checkpoints given to CanvasModule.load_from_checkpoint ---------------------------


def _pickle_strings(data: bytes) -> set[str]:
    """Every string constant of a pickle, read opcode by opcode: nothing is constructed or run."""
    return {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}


def check_lightning_checkpoint(path: object, caller: str = "load_from_checkpoint") -> None:
    """Refuse, naming the file, what ``LightningModule.load_from_checkpoint`` cannot load.

    Refused with :class:`~canvas_engineering.errors.CheckpointFileError`: a missing file, a
    folder, an unreadable or damaged file (a broken seal, zip archive or pickle), a file that is
    not a PyTorch checkpoint, a loop checkpoint (the message says to use
    :func:`load_loop_checkpoint`) and any other ``torch.save`` file without Lightning's
    ``state_dict`` and ``pytorch-lightning_version`` keys. The check reads the archive's pickle
    opcode by opcode, without loading tensors or running anything. A file object, a URL
    (``s3://...``) or a legacy (non-zip) ``torch.save`` file is left to Lightning.

    Args:
        path: what was given as ``checkpoint_path``.
        caller: named in messages (``"CanvasModule.load_from_checkpoint"``).

    """
    if not isinstance(path, (str, os.PathLike)) or "://" in str(path):
        return
    file = Path(path)
    where = f"{caller}: {str(file)!r}"

    def fail(what: str) -> CheckpointFileError:
        return CheckpointFileError(f"{where}: {what}", path=str(file))

    if not file.exists():
        raise fail("no such file")
    if file.is_dir():
        raise fail("is a folder, not a checkpoint file")
    try:
        _verify_seal(file)
        with open(file, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from exc
    except _SealMismatch as exc:
        raise fail(f"damaged: its bytes changed since it was written (SHA-256 seal mismatch: {exc})") from exc
    if head[:1] == b"\x80":
        return  # a legacy torch.save pickle: Lightning reads it
    if head != _ZIP:
        raise fail("not a PyTorch checkpoint (neither a zip archive written by torch.save nor a pickle)")
    try:
        with zipfile.ZipFile(file) as archive:
            pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            strings = _pickle_strings(archive.read(pickles[0])) if pickles else None
    except Exception as exc:  # any failure to parse these bytes: damaged
        raise fail(f"damaged: unreadable archive or pickle ({type(exc).__name__}: {exc})") from exc
    if strings is None:
        raise fail("not a torch.save file (a zip archive without data.pkl)")
    if FORMAT in strings and "pytorch-lightning_version" not in strings:
        raise fail(
            "is a loop checkpoint (written by save_loop_checkpoint or the LoopCheckpoint callback), not a "
            "Lightning checkpoint; build the model, then restore it with "
            "canvas_engineering.load_loop_checkpoint(model, path)"
        )
    for key in ("state_dict", "pytorch-lightning_version"):
        if key not in strings:
            raise fail(
                f"not a Lightning checkpoint (it has no {key!r} key); write one with Trainer.save_checkpoint "
                "or the ModelCheckpoint callback"
            )


def check_finite_weights(model: nn.Module, path: object, caller: str = "load_from_checkpoint") -> None:
    """Refuse a model whose loaded parameters or buffers hold NaN or an infinity, naming the first one.

    Raises:
        CheckpointFileError: naming ``path``, the tensor and how many of its values are not finite.

    """
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    bad = non_finite_parameter(tensors)
    if bad is not None:
        name, count, numel = bad
        msg = (
            f"{caller}: {str(path)!r}: {name!r} holds {count} non-finite values (NaN or infinity) of {numel}; "
            "the run that saved it diverged. Pass allow_non_finite=True to load it anyway"
        )
        raise CheckpointFileError(msg, path=str(path))
