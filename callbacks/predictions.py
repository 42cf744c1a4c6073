"""Prediction files: what ``predict_step`` returns, written as safetensors with a JSON index.

:class:`CanvasPredictionWriter` is a Lightning
:class:`~lightning.pytorch.callbacks.BasePredictionWriter`; ``canvas-engineering predict``
adds one by default, writing into ``predictions/`` of the run's folder.

File format (``output_dir``):

* ``write_interval="batch"`` (default): one file per batch,
  ``predictions-dl<dataloader>-batch<index:05d>.safetensors``;
  ``write_interval="epoch"``: one file per dataloader for the whole run,
  ``predictions-dl<dataloader>.safetensors``, every batch concatenated along the first (batch) dimension.
* Each file maps the keys of ``predict_step``'s dict to tensors, ``(B, ...)`` on the CPU, in the
  dtype the model returned. Nested dicts are flattened with ``/``: a :class:`CanvasModule` returns
  ``{region: (B, frames, ...)}`` for its predicted regions, and ``"memory_out/<region>"`` with a
  memory carrier. Read one with :func:`safetensors.torch.load_file`.
* ``predictions.json`` indexes the files: for each, its dataloader, batch index, the dataset
  indices of its samples (when Lightning tracks them), and every key's shape and dtype.
  It is rewritten (temp-then-rename) after every file, so it always lists complete files only.

Example::

    >>> from lightning import Trainer
    >>> from canvas_engineering.callbacks import CanvasPredictionWriter
    >>> writer = CanvasPredictionWriter("runs/predictions", write_interval="epoch")
    >>> trainer = Trainer(callbacks=[writer])  # doctest: +SKIP

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import save as safetensors_bytes
from typing_extensions import override

from canvas_engineering._atomic import atomic_write_bytes
from canvas_engineering.errors import CanvasValidationError

__all__ = ["INDEX_FILE", "CanvasPredictionWriter", "flatten_prediction"]

#: Name of the JSON index written beside the prediction files.
INDEX_FILE = "predictions.json"


def flatten_prediction(prediction: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten ``predict_step``'s output to ``{key: contiguous CPU tensor}`` (nested keys joined by ``/``).

    A bare tensor becomes ``{"prediction": tensor}``; a list or tuple uses the item's position as key.

    Raises:
        CanvasValidationError: a value is neither a tensor nor a dict/list/tuple of tensors.

    """
    if torch.is_tensor(prediction):
        return {prefix or "prediction": prediction.detach().cpu().contiguous()}
    if isinstance(prediction, Mapping):
        items = [(str(k), v) for k, v in prediction.items()]
    elif isinstance(prediction, Sequence) and not isinstance(prediction, (str, bytes)):
        items = [(str(i), v) for i, v in enumerate(prediction)]
    else:
        where = f" at {prefix!r}" if prefix else ""
        msg = (
            f"CanvasPredictionWriter: predict_step returned {type(prediction).__name__}{where}; "
            "only tensors and dicts/lists of tensors can be written"
        )
        raise CanvasValidationError(msg)
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(flatten_prediction(value, f"{prefix}/{key}" if prefix else key))
    return out


class CanvasPredictionWriter(BasePredictionWriter):
    """Write ``predict_step``'s outputs to safetensors files with a JSON index (see the module docs).

    Args:
        output_dir: folder of the files; ``None``: ``predictions/`` in the trainer's ``log_dir``
            (the run's versioned folder), resolved when the trainer sets up.
        write_interval: ``"batch"`` (one file per batch, written as they come) or ``"epoch"``
            (one file per dataloader at the end; the predictions are kept in memory until then).

    Attributes:
        written: the files written so far, in order.

    Raises:
        CanvasValidationError: ``write_interval`` is not ``"batch"`` or ``"epoch"``.

    """

    def __init__(
        self, output_dir: str | os.PathLike[str] | None = None, write_interval: Literal["batch", "epoch"] = "batch"
    ) -> None:
        if write_interval not in ("batch", "epoch"):
            msg = f"CanvasPredictionWriter: write_interval={write_interval!r}; choose 'batch' or 'epoch'"
            raise CanvasValidationError(msg)
        super().__init__(write_interval)
        self.output_dir: Path | None = Path(output_dir) if output_dir is not None else None
        self.written: list[Path] = []
        self._index: list[dict[str, Any]] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.output_dir is None:
            self.output_dir = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written, self._index = [], []

    def _write(self, trainer: pl.Trainer, name: str, tensors: dict[str, torch.Tensor], entry: dict[str, Any]) -> None:
        if not trainer.is_global_zero or self.output_dir is None:
            return
        path = self.output_dir / name
        atomic_write_bytes(path, safetensors_bytes(tensors))
        keys = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()}
        self._index.append({"file": name, **entry, "keys": keys})
        index = {"format": "safetensors", "write_interval": self.interval.value, "files": self._index}
        atomic_write_bytes(self.output_dir / INDEX_FILE, json.dumps(index, indent=2).encode())
        self.written.append(path)

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        entry = {"dataloader": dataloader_idx, "batch": batch_idx, "indices": _indices(batch_indices)}
        self._write(trainer, f"predictions-dl{dataloader_idx}-batch{batch_idx:05d}.safetensors",
                    flatten_prediction(prediction), entry)

    @override
    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        # predictions: the list of batches for one dataloader, one such list per dataloader for several;
        # batch_indices: always one list (of per-batch sample indices) per dataloader
        per_loader = predictions if trainer.predict_loop.num_dataloaders > 1 else [predictions]
        for dl, batches in enumerate(per_loader):
            batch_idx = batch_indices[dl] if dl < len(batch_indices) else []
            flat = [flatten_prediction(p) for p in batches]
            if not flat:
                continue
            tensors = {k: torch.cat([f[k] for f in flat]) for k in flat[0]}
            samples = [i for idx in batch_idx or [] for i in (_indices(idx) or [])]
            entry = {"dataloader": dl, "batches": len(flat), "indices": samples or None}
            self._write(trainer, f"predictions-dl{dl}.safetensors", tensors, entry)


def _indices(batch_indices: Any) -> list[int] | None:
    if batch_indices is None:
        return None
    return [int(i) for i in batch_indices]
