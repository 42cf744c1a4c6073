"""Loop-only checkpoints: save and restore just what a looped, mostly frozen model trains.

A grafted backbone is frozen except for its loop embeddings (and whatever the freeze
strategy leaves trainable), so a checkpoint of those parameters is a small fraction of the
model (the seed: "~0.1% of model"). The file is a ``torch.save`` of plain data and tensors::

    {
        "format": "canvas_engineering.models.loop_checkpoint",
        "format_version": 1,
        "config": {...},          # what load_loop_checkpoint checks (see save_loop_checkpoint)
        "state_dict": {qualified parameter name: tensor},
    }

so it loads with ``torch.load(..., weights_only=True)``: nothing in it can run code.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from canvas_engineering._atomic import atomic_write_bytes
from canvas_engineering._version import __version__
from canvas_engineering.errors import LoopCheckpointError
from canvas_engineering.models.looped import LoopedBlockWrapper

__all__ = ["FORMAT", "FORMAT_VERSION", "load_loop_checkpoint", "save_loop_checkpoint"]

#: value of the ``"format"`` key of a loop checkpoint
FORMAT: Final = "canvas_engineering.models.loop_checkpoint"
#: version of the file layout; newer files are refused by older readers
FORMAT_VERSION: Final = 1

_PLAIN = (str, int, float, bool, type(None))


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

    Returns:
        The path written.

    Raises:
        LoopCheckpointError: ``extra_config`` holds a value ``weights_only`` loading refuses.

    """
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buffer.getvalue())


def _read(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = (
            f"loop checkpoint {str(path)!r}: refused to load, it holds more than tensors and plain data "
            f"(torch.load weights_only=True: {first}). Only load files you trust, and not with this function"
        )
        raise LoopCheckpointError(msg, path=str(path)) from exc
    except (RuntimeError, EOFError) as exc:
        msg = f"loop checkpoint {str(path)!r}: unreadable ({type(exc).__name__}: {exc})"
        raise LoopCheckpointError(msg, path=str(path)) from exc
    if (
        not isinstance(payload, dict)
        or payload.get("format") != FORMAT
        or not isinstance(payload.get("config"), dict)
        or not isinstance(payload.get("state_dict"), dict)
    ):
        msg = f"loop checkpoint {str(path)!r}: not a canvas-engineering loop checkpoint (no {FORMAT!r} format key)"
        raise LoopCheckpointError(msg, path=str(path))
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        msg = (
            f"loop checkpoint {str(path)!r}: format_version {version!r} is newer than this library reads "
            f"({FORMAT_VERSION}); upgrade canvas-engineering"
        )
        raise LoopCheckpointError(msg, path=str(path))
    return payload


def load_loop_checkpoint(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_loop_checkpoint` into ``model``'s parameters.

    Everything is checked before any parameter changes. Every saved parameter must exist in
    the model with the same shape (a shape mismatch is an error even when not ``strict``).
    With ``strict``, every loop parameter of the model must be in the file and every looped
    block must have the saved ``max_loops``; without it, names on one side only are skipped
    and reported. Values are copied in place without recording gradients (dtype and device
    follow the model's parameters).

    Args:
        model: the model to restore into.
        path: a file written by :func:`save_loop_checkpoint`.
        strict: refuse names present on one side only.

    Returns:
        The saved ``config`` (see :func:`save_loop_checkpoint`; ``extra_config`` is under
        ``"extra"``) plus ``"missing_keys"`` (model loop parameters not in the file) and
        ``"unexpected_keys"`` (saved names not in the model); both empty when ``strict``.

    Raises:
        LoopCheckpointError: the file is unreadable, refused by ``weights_only`` loading, or
            does not fit the model (the message names the first offending parameter and, for
            a shape mismatch, both shapes).
        FileNotFoundError: ``path`` does not exist.

    """
    path = Path(path)
    payload = _read(path)
    config, state = dict(payload["config"]), payload["state_dict"]
    where = f"loop checkpoint {str(path)!r}"
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
