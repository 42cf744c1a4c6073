"""``save_pretrained`` / ``from_pretrained`` for :class:`~canvas_engineering.CanvasModule`.

The file conventions of Hugging Face model repositories (what ``huggingface_hub``'s
``ModelHubMixin`` writes), so a folder can be pushed to the Hub as it is:

* ``model.safetensors``: every tensor of the ``state_dict``; its metadata holds the SHA-256 of
  the tensors' bytes (in key order), verified on load, and the package version;
* ``config.json``: the model's hyperparameters (schema, program, region formats, backbone and its
  configuration, noise process, normalisation statistics, ...), the active loops and betas,
  the package version and a format version;
* ``README.md``: a model card: the canvas summary, the training data (the schema's metadata) and
  the final metrics given.

Every file is written through a temporary file and a rename; a folder that fails to load raises
:class:`~canvas_engineering.errors.CheckpointFileError` naming the file and what is wrong. A
loaded model gives the same outputs bit for bit.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from canvas_engineering._atomic import atomic_write_bytes, atomic_write_text
from canvas_engineering._json_source import read_tagged_config
from canvas_engineering._version import __version__
from canvas_engineering.errors import CanvasValidationError, CheckpointFileError

if TYPE_CHECKING:
    from canvas_engineering.plugin_host.registry import PluginRegistry

__all__ = ["CONFIG_NAME", "FORMAT", "WEIGHTS_NAME", "load_pretrained", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "canvas-engineering-pretrained"
FORMAT_VERSION = 1
_CONFIG_KEYS = {"format", "format_version", "canvas_engineering_version", "class", "hparams", "loops", "betas"}


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clones: safetensors refuses tensors that share storage (tied or viewed weights)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def _model_card(model: Any, metrics: Mapping[str, float] | None, data: str | None) -> str:
    schema = model.schema
    layout = schema.layout
    meta = schema.metadata or {}
    lines = [
        "---",
        "library_name: canvas-engineering",
        "tags:",
        "- canvas-engineering",
        "- diffusion-transformer",
        "---",
        "",
        "# Canvas model",
        "",
        f"A `CanvasModule` saved with canvas-engineering {__version__}. Load it with:",
        "",
        "```python",
        "from canvas_engineering import CanvasModule",
        "model = CanvasModule.from_pretrained(\"PATH_OR_REPO\")",
        "```",
        "",
        "## Canvas",
        "",
        f"T={layout.T}, H={layout.H}, W={layout.W}, d_model={layout.d_model}, t_current={layout.t_current}: "
        f"{layout.num_positions} positions, {len(schema.topology.connections)} connections; backbone "
        f"`{model.hparams['backbone']}` with {model.max_loops} loop(s).",
        "",
        "| region | frames x cells | period | role | loss weight |",
        "|---|---|---:|---|---:|",
    ]
    for name, spec in layout.regions.items():
        t, h, w = layout.region_size(name)
        role = "output" if spec.is_output else "context"
        lines.append(f"| `{name}` | {t} x {h}x{w} | {spec.period} | {role} | {spec.loss_weight:g} |")
    lines += ["", "## Training data", ""]
    described = data or ", ".join(f"{k}: {v}" for k, v in meta.items() if isinstance(v, (str, int, float)))
    lines.append(described or "Not recorded.")
    if model.normalization:
        lines.append(f"Normalised per region (statistics stored in `config.json`): {', '.join(model.normalization)}.")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {float(v):.6g} |" for k, v in sorted(metrics.items()) if math.isfinite(float(v))]
    else:
        lines.append("None recorded.")
    return "\n".join(lines) + "\n"


def save_pretrained(
    model: Any,
    directory: str | os.PathLike[str],
    *,
    metrics: Mapping[str, float] | None = None,
    data_description: str | None = None,
) -> Path:
    """Write ``model`` to ``directory`` (created if missing): weights, config and model card.

    Args:
        model: the :class:`CanvasModule`.
        directory: the folder.
        metrics: final metrics for the model card (default: the attached trainer's
            ``callback_metrics``, if any).
        data_description: the training data, for the model card (default: the schema's metadata).

    Returns:
        The folder.

    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        msg = f"save_pretrained: {directory} exists and is not a folder"
        raise CheckpointFileError(msg, path=str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save

    tensors = _tensors(model)
    metadata = {"format": "pt", "sha256": _digest(tensors), "canvas_engineering_version": __version__}
    hparams = {k: v for k, v in dict(model.hparams).items() if k != "registry"}
    blocks = model._looped_blocks()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "canvas_engineering_version": __version__,
        "class": type(model).__name__,
        "hparams": hparams,
        "loops": int(blocks[0].current_loops) if blocks else 1,
        "betas": [float(b) for b in blocks[0].betas] if blocks else [],
    }
    if metrics is None:
        trainer = getattr(model, "_trainer", None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} if trainer is not None else None
    text = json.dumps(config, indent=2, allow_nan=False)
    atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata=metadata))
    atomic_write_text(directory / CARD_NAME, _model_card(model, metrics, data_description))
    atomic_write_text(directory / CONFIG_NAME, text)  # last: a folder with a config is complete
    return directory


def _read_config(path: Path) -> dict[str, Any]:
    def refuse(msg: str) -> CheckpointFileError:
        return CheckpointFileError(msg, path=str(path))

    config = read_tagged_config(path, FORMAT, FORMAT_VERSION, _CONFIG_KEYS, refuse)
    if not isinstance(config.get("hparams"), dict):
        msg = f"{path}: hparams must be an object"
        raise CheckpointFileError(msg, path=str(path))
    return config


def _read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file once and check its tensors against the SHA-256 in its metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = weights.read_bytes()
        tensors = load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (OSError, SafetensorError, ValueError, RecursionError) as err:
        msg = f"{weights}: cannot read the weights ({' '.join(str(err).split()) or type(err).__name__})"
        raise CheckpointFileError(msg, path=str(weights)) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("sha256") != _digest(tensors):
        msg = f"{weights}: damaged: the tensors do not match the SHA-256 in the file's metadata"
        raise CheckpointFileError(msg, path=str(weights))
    return tensors


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def _resolve(source: str | os.PathLike[str]) -> Path:
    """Return a local folder: ``source`` itself, or the Hub snapshot of a repository id ``owner/name``."""
    directory = Path(source)
    if directory.is_dir():
        return directory
    text = os.fspath(source)
    if not directory.exists() and _REPO_ID.match(text) and not text.startswith("."):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
        except Exception as err:  # network, authentication, missing repository: all one answer for the user
            msg = f"from_pretrained: {text} is neither a local folder nor a reachable Hub repository ({err})"
            raise CheckpointFileError(msg, path=text) from None
    msg = f"from_pretrained: {directory} is not a folder (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
    raise CheckpointFileError(msg, path=str(directory))


def load_pretrained(
    cls: type,
    directory: str | os.PathLike[str],
    *,
    registry: PluginRegistry | None = None,
    allow_non_finite: bool = False,
) -> Any:
    """Build ``cls`` from a folder written by :func:`save_pretrained` (or a Hub repository id), in eval mode.

    Raises:
        CheckpointFileError: naming the file: a missing or foreign config, damaged or incomplete
            weights (the SHA-256 in their metadata does not match), a tensor the model lacks or
            misses, non-finite weights (unless ``allow_non_finite``).

    """
    directory = _resolve(directory)
    config = _read_config(directory / CONFIG_NAME)
    weights = directory / WEIGHTS_NAME
    tensors = _read_weights(weights)
    if not allow_non_finite:
        for name, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                msg = f"{weights}: tensor {name!r} holds non-finite values (pass allow_non_finite=True to load anyway)"
                raise CheckpointFileError(msg, path=str(weights))
    try:
        model = cls(**config["hparams"], registry=registry)
    except TypeError as err:  # a hyper-parameter this version does not take
        msg = f"{directory / CONFIG_NAME}: hparams do not build a {cls.__name__}: {err}"
        raise CheckpointFileError(msg, path=str(directory / CONFIG_NAME)) from None
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except (CanvasValidationError, RuntimeError) as err:  # a loop state or a shape that does not fit
        msg = f"{weights}: does not fit the model its config builds: {' '.join(str(err).split())[:400]}"
        raise CheckpointFileError(msg, path=str(weights)) from None
    if missing or unexpected:
        msg = f"{weights}: does not fit the model its config builds: missing {missing[:5]}, unexpected {unexpected[:5]}"
        raise CheckpointFileError(msg, path=str(weights))
    if model._looped_blocks():  # the config wins over the weights' loop state: edit it to run more loops
        try:
            model.set_loops(config.get("loops", 1))
            model.set_betas(config.get("betas", [1.0] * model.max_loops))
        except CanvasValidationError as err:
            msg = f"{directory / CONFIG_NAME}: loops/betas: {err}"
            raise CheckpointFileError(msg, path=str(directory / CONFIG_NAME)) from None
    return model.eval()
