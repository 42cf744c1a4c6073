"""Checkpoint callbacks: loop-only files, and random states for bit-exact resumes.

:class:`LoopCheckpoint` writes small loop-parameter files with
:func:`~canvas_engineering.models.loop_checkpoint.save_loop_checkpoint` while a model trains.
:class:`RNGState` carries the random number generators' states inside Lightning checkpoints:
Lightning restores weights, optimizers and loop counters but not the RNGs, so without it a
resumed fit draws different diffusion timesteps and noise than an uninterrupted one. It also
keeps validation from moving the RNGs, and makes Lightning resume epoch-end checkpoints exactly.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.loop_checkpoint import save_loop_checkpoint
from canvas_engineering.validation import check_non_negative_int

__all__ = ["LoopCheckpoint", "RNGState"]


def _loop_state(pl_module: pl.LightningModule) -> dict[str, Any]:
    """Active loops and betas of the model's looped blocks (plain data for ``extra_config``)."""
    backbone = getattr(pl_module, "backbone", pl_module)
    out: dict[str, Any] = {}
    if hasattr(backbone, "current_loops"):
        out["current_loops"] = int(backbone.current_loops)
    blocks = list(getattr(backbone, "looped_blocks", []) or [])
    if blocks:
        out["betas"] = [float(b) for b in blocks[0].betas]
    return out


def _epoch_end_as_batch_end(checkpoint: dict[str, Any]) -> bool:
    """Rewrite the fit-loop progress of a checkpoint written in ``on_train_epoch_end`` as at its last batch's end.

    Lightning resumes a checkpoint written at the end of an epoch (``ModelCheckpoint(every_n_epochs=...)``,
    which saves in ``on_train_epoch_end``, or any checkpoint of a fit that ``max_steps`` stopped) by
    running one more batch in the finished epoch when ``max_steps`` bounds the fit, and, when ``max_steps``
    stopped it in the middle of an epoch, by starting the next epoch instead of finishing that one. A
    checkpoint written at the end of the epoch's last training batch holds the same weights, optimizer
    and callback states, and Lightning resumes it exactly (the rest of the epoch, or the next epoch), so
    the epoch-end progress is turned into that one: the epoch not yet processed, the last batch not yet
    completed. Returns whether ``checkpoint`` was rewritten (only that exact epoch-end progress is).
    """
    try:
        loop = checkpoint["loops"]["fit_loop"]
        epochs, batches = loop["epoch_progress"], loop["epoch_loop.batch_progress"]
        stepped = loop["epoch_loop.state_dict"]
        fields = ("ready", "started", "processed", "completed")
        counts = [tuple(int(p[f]) for f in fields) for p in (epochs["total"], epochs["current"])]
        done = [tuple(int(p[f]) for f in fields) for p in (batches["total"], batches["current"])]
        int(stepped["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        return False
    # on_train_epoch_end: the epoch processed but not completed, every batch it started completed
    epoch_end = all(r == s == p == c + 1 for r, s, p, c in counts)
    batches_done = all(r == s == p == c and c > 0 for r, s, p, c in done)
    if not (epoch_end and batches_done):
        return False
    for progress in (epochs["total"], epochs["current"]):
        progress["processed"] -= 1
    for progress in (batches["total"], batches["current"]):
        progress["completed"] -= 1
    stepped["_batches_that_stepped"] = int(stepped["_batches_that_stepped"]) - 1
    return True


class LoopCheckpoint(Callback):
    """Save the loop parameters (and other trainable parameters) every ``every_n_steps`` steps.

    After each optimizer step whose ``global_step`` is a multiple of ``every_n_steps``, rank 0
    writes ``dirpath / filename.format(step=global_step, epoch=current_epoch)`` with
    :func:`~canvas_engineering.models.loop_checkpoint.save_loop_checkpoint` (loop embeddings plus
    every parameter with ``requires_grad``). With ``save_last``, it also writes
    ``dirpath / last_filename`` when training ends. Each file's ``extra`` config records
    ``global_step``, ``epoch``, ``current_loops`` and ``betas``; restore one with
    :func:`~canvas_engineering.models.loop_checkpoint.load_loop_checkpoint`.

    Under a sharded strategy (FSDP) the parameters on rank 0 are shards; use Lightning's
    ``ModelCheckpoint`` there.

    Args:
        dirpath: directory of the files (created when missing); ``None``: ``loops/`` in the
            trainer's ``log_dir`` (the run's versioned folder, like ``ModelCheckpoint``'s
            ``checkpoints/``), resolved when the trainer sets up, so runs never overwrite each other.
        every_n_steps: optimizer steps between files (>= 0; 0 writes only the last file).
        save_last: write ``last_filename`` at the end of training.
        filename: template of the periodic files; ``{step}`` and ``{epoch}`` are filled in.
        last_filename: name of the end-of-training file.

    Attributes:
        saved_paths: the files written so far, oldest first.
        last_saved_step: ``global_step`` of the latest periodic file (-1 before any).

    Raises:
        CanvasValidationError: an argument is out of range, ``filename`` has a placeholder other than
            ``{step}``/``{epoch}``, or nothing would ever be saved.

    Example::

        >>> from canvas_engineering.callbacks import LoopCheckpoint
        >>> checkpoint = LoopCheckpoint("checkpoints/loops", every_n_steps=500)
        >>> checkpoint.path_for(step=1000)
        PosixPath('checkpoints/loops/loops-step1000.pt')

    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        every_n_steps: int = 100,
        save_last: bool = True,
        filename: str = "loops-step{step}.pt",
        last_filename: str = "loops-last.pt",
    ) -> None:
        super().__init__()
        if dirpath is not None and (not isinstance(dirpath, (str, os.PathLike)) or not str(dirpath)):
            msg = f"LoopCheckpoint: dirpath={dirpath!r} must be a non-empty path or None (the run's log_dir/loops)"
            raise CanvasValidationError(msg)
        check_non_negative_int(every_n_steps, "LoopCheckpoint: every_n_steps")
        if every_n_steps == 0 and not save_last:
            msg = "LoopCheckpoint: every_n_steps=0 and save_last=False would never save; enable one of them"
            raise CanvasValidationError(msg)
        for name, template in (("filename", filename), ("last_filename", last_filename)):
            try:
                rendered = str(template).format(step=0, epoch=0)
            except (KeyError, IndexError, ValueError) as err:
                msg = (
                    f"LoopCheckpoint: {name}={template!r} is not a valid template ({err!r}); use {{step}} and {{epoch}}"
                )
                raise CanvasValidationError(msg) from None
            if not rendered or Path(rendered).name != rendered:
                msg = f"LoopCheckpoint: {name}={template!r} must be a file name without directories"
                raise CanvasValidationError(msg)
        self._given_dirpath = dirpath
        self.dirpath: Path | None = Path(dirpath) if dirpath is not None else None
        self.every_n_steps = every_n_steps
        self.save_last = bool(save_last)
        self.filename = filename
        self.last_filename = last_filename
        self.saved_paths: list[str] = []
        self.last_saved_step = -1

    @property
    @override
    def state_key(self) -> str:
        # the folder as given: a resumed run (a new log_dir) still finds this callback's state
        given = self._given_dirpath
        dirpath = str(given) if given is not None else None
        return self._generate_state_key(dirpath=dirpath, every_n_steps=self.every_n_steps)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "loops"

    def path_for(self, step: int, epoch: int = 0) -> Path:
        """Return the periodic file of ``step`` (and ``epoch``).

        Raises:
            CanvasValidationError: ``dirpath`` was ``None`` and no trainer has set it up yet.

        """
        if self.dirpath is None:
            msg = "LoopCheckpoint: dirpath=None is resolved to <log_dir>/loops when the trainer sets up; not yet"
            raise CanvasValidationError(msg)
        return self.dirpath / self.filename.format(step=step, epoch=epoch)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path) -> None:
        if trainer.is_global_zero:
            extra = {"global_step": trainer.global_step, "epoch": trainer.current_epoch, **_loop_state(pl_module)}
            save_loop_checkpoint(pl_module, path, extra_config=extra)
            self.saved_paths.append(str(path))
        trainer.strategy.barrier("LoopCheckpoint")

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        n, step = self.every_n_steps, trainer.global_step
        # gradient accumulation repeats a global_step; a step that jumps past a multiple still saves
        if n == 0 or step <= 0 or step // n == max(self.last_saved_step, 0) // n:
            return
        self._save(trainer, pl_module, self.path_for(step, trainer.current_epoch))
        self.last_saved_step = step

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last:
            last = self.last_filename.format(step=trainer.global_step, epoch=trainer.current_epoch)
            self._save(trainer, pl_module, self.path_for(0).with_name(last))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "dirpath": str(self.dirpath),
            "every_n_steps": self.every_n_steps,
            "save_last": self.save_last,
            "filename": self.filename,
            "last_filename": self.last_filename,
            "saved_paths": list(self.saved_paths),
            "last_saved_step": self.last_saved_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved_paths = [str(p) for p in state_dict.get("saved_paths", self.saved_paths)]
        self.last_saved_step = int(state_dict.get("last_saved_step", self.last_saved_step))


class RNGState(Callback):
    """Keep the random number generators' states in Lightning checkpoints, for bit-exact resumes.

    Lightning checkpoints hold weights, optimizer and scheduler states and loop counters, but
    not the RNGs, so a resumed fit draws different timesteps, noise, dropout masks and
    shuffles than the uninterrupted fit would have. This callback's :meth:`state_dict` is the
    state of torch's CPU generator, of every CUDA device's generator, of NumPy's global
    generator and of Python's ``random`` at the moment the checkpoint is written, and
    :meth:`load_state_dict` puts them back when Lightning restores callbacks (before the
    sanity check, which Lightning runs with isolated RNGs, and before the first training
    batch).

    It also makes validation during ``fit`` neutral to the RNGs, as Lightning does for the
    sanity check: the states at the end of the training batch before a validation run are put
    back when it ends (and a checkpoint written during validation holds them). Whatever
    validation draws (noise, dropout, a validation loader's worker seed) then changes nothing
    in training, and a fit resumed from a checkpoint written just before a validation run,
    which Lightning does not run again, continues exactly like one that ran it.

    A resumed fit continues exactly when the same RNG draws happen between the checkpoint
    and the next training batch in both runs: checkpoints written after a training batch or
    at the end of an epoch or of validation (``ModelCheckpoint`` in every mode, ``last.ckpt``),
    with training dataloaders that are resumable mid-epoch (the canvas datamodules'
    :class:`~canvas_engineering.datamodules.ResumableDataLoader`) or a checkpoint at an epoch
    boundary. Callbacks that draw random numbers in ``on_train_batch_end`` should come before
    this one in the callback list.

    When a fit resumes, it also makes Lightning resume a checkpoint written at the end of an
    epoch (``ModelCheckpoint(every_n_epochs=...)``, or any checkpoint written when ``max_steps``
    stopped a fit) like the checkpoint of that epoch's last training batch: Lightning would
    otherwise run one batch too many in the finished epoch under ``max_steps``, or skip the
    rest of an epoch that ``max_steps`` cut short.

    Checkpoints are written by rank 0, so on resume every rank gets rank 0's states, which
    is what ``seed_everything(seed)`` gives every rank in the first place.

    Example::

        >>> from lightning import Trainer, seed_everything
        >>> from canvas_engineering.callbacks import RNGState
        >>> trainer = Trainer(callbacks=[RNGState()], logger=False)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        super().__init__()
        #: the states at the end of the last training batch (put back after validation)
        self._after_batch: dict[str, Any] | None = None
        self._in_validation = False

    @staticmethod
    def _capture() -> dict[str, Any]:
        """Return the current states of every generator (plain data and tensors)."""
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            # plain data and tensors only, so checkpoints load with weights_only=True
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def _apply(state_dict: dict[str, Any]) -> None:
        """Set every generator present in ``state_dict``."""
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "numpy" in state_dict:
            s = state_dict["numpy"]
            keys = np.asarray(s["keys"].numpy() if torch.is_tensor(s["keys"]) else s["keys"], dtype=np.uint32)
            np.random.set_state((s["kind"], keys, int(s["pos"]), int(s["has_gauss"]), float(s["cached_gaussian"])))
        if "python" in state_dict:
            version, internal, gauss = state_dict["python"]
            random.setstate((version, tuple(internal), gauss))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._after_batch, self._in_validation = None, False  # nothing carried over from an earlier fit

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._after_batch = self._capture()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the sanity check already runs with isolated RNGs; validate() outside fit has no training to protect
        self._in_validation = (
            trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and self._after_batch is not None
        )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._in_validation and self._after_batch is not None:
            self._apply(self._after_batch)
        self._in_validation = False

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._in_validation and self._after_batch is not None:
            return self._after_batch  # what training continues from once validation ends
        return self._capture()

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # called before Lightning restores its loops from the same dict
        if trainer.state.fn == TrainerFn.FITTING:
            _epoch_end_as_batch_end(checkpoint)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._apply(state_dict)
        # a validation Lightning finishes before the first training batch of the resumed fit is rolled back too
        self._after_batch = state_dict
