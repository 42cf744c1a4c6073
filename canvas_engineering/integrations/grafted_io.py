"""Save and reload a grafted CogVideoX transformer so that the reloaded model equals the saved one.

A grafted transformer is a diffusers model whose blocks are
:class:`~canvas_engineering.models.looped.LoopedBlockWrapper`; diffusers' own
``save_pretrained`` would write the wrappers' keys (``transformer_blocks.0.block...``), which
its ``from_pretrained`` does not recognise: every block would come back newly initialised.
:func:`~canvas_engineering.integrations.cogvideox.graft_looped_blocks` therefore makes the
grafted model's ``save_pretrained`` raise :class:`~canvas_engineering.errors.GraftedSaveError` pointing here, and
:func:`save_grafted_transformer` writes a folder that :func:`load_grafted_transformer` rebuilds
exactly::

    folder/
      canvas_graft.json      # format, package version, graft arguments (max_loops, freeze,
                             # action_dim, text_rule, checkpoint, the canvas schema),
                             # the base model (a subfolder, or a Hub id + SHA-256)
      loops.pt               # a sealed loop checkpoint (save_loop_checkpoint): loop
                             # embeddings, every trainable parameter, the loop counts and
                             # betas of every block, the action head's weights
      transformer/           # only when the base weights are written: diffusers'
                             # save_pretrained of the un-grafted model (config.json +
                             # safetensors), loadable by diffusers alone

With ``base="THUDM/CogVideoX-2b"`` (and ``base_subfolder="transformer"``) the base weights are
not copied, only named: the SHA-256 of the frozen base tensors is stored and checked after the
base is loaded again, so a different or changed base is refused instead of silently used.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from canvas_engineering._atomic import atomic_write_text
from canvas_engineering._json_source import read_tagged_config
from canvas_engineering._version import __version__
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.errors import CanvasValidationError, CheckpointFileError
from canvas_engineering.integrations.cogvideox import (
    CanvasCogVideoXAttnProcessor,
    graft_looped_blocks,
    looped_wrappers,
)
from canvas_engineering.models.action_head import ActionHead
from canvas_engineering.models.loop_checkpoint import load_loop_checkpoint, save_loop_checkpoint
from canvas_engineering.models.looped import LoopedBlockWrapper

__all__ = [
    "GRAFT_CONFIG",
    "GraftedTransformer",
    "load_grafted_transformer",
    "save_grafted_transformer",
]

GRAFT_CONFIG = "canvas_graft.json"
LOOPS_FILE = "loops.pt"
BASE_FOLDER = "transformer"
FORMAT = "canvas-engineering-grafted-transformer"
FORMAT_VERSION = 1
_KEYS = {"format", "format_version", "canvas_engineering_version", "base_class", "graft", "base"}


class GraftedTransformer(NamedTuple):
    """What :func:`load_grafted_transformer` returns (what ``graft_looped_blocks`` returns, plus the model)."""

    model: nn.Module
    looped_blocks: nn.ModuleList
    action_head: ActionHead


def _base_items(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the state under the un-grafted (diffusers) names, loop parameters and loop state left out."""
    out = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "transformer_blocks" and parts[2] == "block":
            out[".".join(parts[:2] + parts[3:])] = tensor
        elif not (parts[0] == "transformer_blocks" and len(parts) == 3):  # loop/stream embeddings, _extra_state
            out[name] = tensor
    return out


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _frozen_base(model: nn.Module, saved: set[str]) -> dict[str, torch.Tensor]:
    """Return the base tensors not stored in the loop checkpoint (what a named base must reproduce)."""
    trainable = {
        n.replace(".block.", ".", 1) if n.startswith("transformer_blocks.") else n
        for n in saved
    }
    return {k: v for k, v in _base_items(model).items() if k not in trainable}


def _graft_settings(model: nn.Module, blocks: list[LoopedBlockWrapper], action_head: ActionHead) -> dict[str, Any]:
    processors = [
        p for p in getattr(model, "attn_processors", {}).values() if isinstance(p, CanvasCogVideoXAttnProcessor)
    ]
    plan = processors[0].plan if processors else None
    return {
        "max_loops": blocks[0].max_loops,
        "freeze": getattr(model, "freeze_strategy", "full"),
        "action_dim": action_head.action_dim,
        "checkpoint": bool(getattr(blocks[0], "checkpoint", False)),
        "text_rule": processors[0].text_rule if processors else "global",
        "schema": CanvasSchema(plan.layout, plan.topology).to_dict() if plan is not None else None,
    }


def save_grafted_transformer(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    action_head: ActionHead,
    base: str | os.PathLike[str] | None = None,
    base_subfolder: str | None = None,
) -> Path:
    """Write a grafted transformer to ``directory`` so :func:`load_grafted_transformer` rebuilds it exactly.

    Args:
        model: a transformer grafted with :func:`graft_looped_blocks`.
        directory: the folder; written whole in a temporary folder, then renamed over it.
        action_head: the head ``graft_looped_blocks`` returned (its weights are saved).
        base: ``None`` to write the base weights (diffusers format, ``transformer/``); or the
            id or folder the base came from (as given to diffusers' ``from_pretrained``): only
            its name and the SHA-256 of its frozen tensors are stored.
        base_subfolder: the ``subfolder`` argument for ``base`` (e.g. ``"transformer"``).

    Returns:
        The folder.

    Raises:
        CanvasValidationError: ``model`` is not grafted or ``action_head`` is not an ActionHead.

    """
    blocks = looped_wrappers(model)
    if not blocks or not isinstance(getattr(model, "transformer_blocks", None), nn.ModuleList):
        msg = f"save_grafted_transformer: {type(model).__name__} is not grafted (no LoopedBlockWrapper blocks)"
        raise CanvasValidationError(msg)
    if not isinstance(action_head, ActionHead):
        msg = f"save_grafted_transformer: action_head must be graft_looped_blocks' ActionHead, got {action_head!r}"
        raise CanvasValidationError(msg)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        msg = f"save_grafted_transformer: {directory} exists and is not a folder"
        raise CheckpointFileError(msg, path=str(directory))
    directory.parent.mkdir(parents=True, exist_ok=True)
    loop_state = {
        f"transformer_blocks.{i}": b.get_extra_state().tolist() for i, b in enumerate(model.transformer_blocks)
    }
    head = {k: v.detach().to("cpu", copy=True) for k, v in action_head.state_dict().items()}
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as tmp:
        folder = Path(tmp) / "out"
        folder.mkdir()
        save_loop_checkpoint(model, folder / LOOPS_FILE, extra_config={"loop_state": loop_state, "action_head": head})
        saved = set(torch.load(folder / LOOPS_FILE, weights_only=True)["state_dict"])
        if base is None:
            _save_base(model, folder / BASE_FOLDER)
            base_entry: dict[str, Any] = {"folder": BASE_FOLDER}
        else:
            base_entry = {
                "pretrained_model_name_or_path": os.fspath(base),
                "subfolder": base_subfolder,
                "sha256": _digest(_frozen_base(model, saved)),
            }
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "canvas_engineering_version": __version__,
            "base_class": type(model).__name__,
            "graft": _graft_settings(model, blocks, action_head),
            "base": base_entry,
        }
        atomic_write_text(folder / GRAFT_CONFIG, json.dumps(config, indent=2, allow_nan=False))
        old = None
        if directory.exists():
            old = Path(tmp) / "old"
            directory.rename(old)
        folder.rename(directory)
    return directory


def _save_base(model: nn.Module, folder: Path) -> None:
    """Diffusers' own ``save_pretrained`` on the model with its original blocks put back for the call."""
    wrappers = list(model.transformer_blocks)
    try:
        for i, wrapper in enumerate(wrappers):
            model.transformer_blocks[i] = wrapper.block
        type(model).save_pretrained(model, folder, safe_serialization=True)
    finally:
        for i, wrapper in enumerate(wrappers):
            model.transformer_blocks[i] = wrapper


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / GRAFT_CONFIG
    return read_tagged_config(path, FORMAT, FORMAT_VERSION, _KEYS, lambda msg: CheckpointFileError(msg, path=str(path)))


def _load_base(config: dict[str, Any], directory: Path, torch_dtype: torch.dtype | None) -> nn.Module:
    import diffusers

    cls = getattr(diffusers, str(config.get("base_class")), None)
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        msg = f"{directory / GRAFT_CONFIG}: base_class {config.get('base_class')!r} is not a diffusers model class"
        raise CheckpointFileError(msg, path=str(directory / GRAFT_CONFIG))
    base = config["base"]
    source = directory / BASE_FOLDER if "folder" in base else base["pretrained_model_name_or_path"]
    kwargs: dict[str, Any] = {} if "folder" in base or not base.get("subfolder") else {"subfolder": base["subfolder"]}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        why = " ".join(str(err).split())[:300]
        msg = f"{directory / GRAFT_CONFIG}: cannot load the base model from {source}: {why}"
        raise CheckpointFileError(msg, path=str(source)) from None


def load_grafted_transformer(
    directory: str | os.PathLike[str],
    *,
    torch_dtype: torch.dtype | None = None,
) -> GraftedTransformer:
    """Rebuild a transformer saved by :func:`save_grafted_transformer`: base, graft, loops, head.

    The base is loaded with diffusers' ``from_pretrained`` (from ``transformer/`` or the recorded
    id), grafted with the saved arguments, and the loop checkpoint restored (checked by its seal);
    a named base must hash to the stored SHA-256. The result computes what the saved model did.

    Raises:
        CheckpointFileError: a missing or foreign config, a base that cannot be loaded or differs
            from the one saved (naming it).
        LoopCheckpointError: a damaged or mismatched ``loops.pt`` (see ``load_loop_checkpoint``).

    """
    directory = Path(directory)
    if not directory.is_dir():
        msg = f"load_grafted_transformer: {directory} is not a folder"
        raise CheckpointFileError(msg, path=str(directory))
    config = _read_config(directory)
    graft = dict(config["graft"])
    model = _load_base(config, directory, torch_dtype)
    schema = graft.pop("schema")
    canvas = None
    if schema is not None:
        s = CanvasSchema.from_dict(schema)
        canvas = (s.layout, s.topology)
    looped, head = graft_looped_blocks(model, canvas=canvas, **graft)
    info = load_loop_checkpoint(model, directory / LOOPS_FILE)
    extra = info["extra"]
    if "sha256" in config["base"]:
        saved = set(info["parameters"])
        if _digest(_frozen_base(model, saved)) != config["base"]["sha256"]:
            msg = (
                f"{directory / GRAFT_CONFIG}: the base model {config['base']['pretrained_model_name_or_path']!r} "
                "loaded now differs from the one the grafted model was saved with (SHA-256 of its frozen weights)"
            )
            raise CheckpointFileError(msg, path=str(directory / GRAFT_CONFIG))
    for i, block in enumerate(looped):
        block.set_extra_state(torch.tensor(extra["loop_state"][f"transformer_blocks.{i}"], dtype=torch.float64))
    head.load_state_dict(extra["action_head"])
    return GraftedTransformer(model.eval(), looped, head)
