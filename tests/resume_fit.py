"""One fit of a tiny looped canvas model, as ``tests/test_resume_modes.py`` runs it (one process per fit).

:func:`run` (or ``python tests/resume_fit.py '<json>'``) fits a 2-loop ``CanvasModule`` on a tiny
``BouncingBallsDataModule`` (3 training batches per epoch, shuffled) with ``LoopCurriculum``,
``AttentionSharpening`` and ``RNGState`` on, then writes the final state (weights, global step,
callback states, warnings) to ``out``. A callback also draws from torch's, NumPy's and Python's
global RNGs during validation, as a user's validation may. Options of the JSON object:

* ``out`` (required): where the final state is written (``torch.save``).
* ``max_steps`` or ``max_epochs`` (one required): the length of the fit.
* ``total_steps``: the curriculum's length (the uninterrupted fit's ``max_steps``).
* ``val``: validate every epoch (otherwise no validation at all).
* ``ckpt_dir``: checkpoint folder; ``every_n_train_steps`` / ``every_n_epochs`` / ``save_last``
  add ``ModelCheckpoint`` callbacks saving every such checkpoint.
* ``ckpt_path``: resume from this checkpoint.
* ``report_steps``: report ``<global_step>`` after each training batch, for a killer (printed,
  or put on the queue given to :func:`run`).
"""

from __future__ import annotations

import json
import random
import sys
import traceback
import warnings
from typing import Any

import canvas_engineering.plugins.attention
import canvas_engineering.plugins.backbones
import canvas_engineering.plugins.datamodules  # noqa: F401 - imported once in a forkserver, not in every fit
import lightning as L
import numpy as np
import torch
from canvas_engineering.callbacks import AttentionSharpening, LoopCurriculum, RNGState
from canvas_engineering.datamodules import BouncingBallsDataModule
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: F401 - the same
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from canvas_engineering.training.module import CanvasModule


class ReportSteps(Callback):
    """Report the global step after every training batch (before that batch's checkpoints are written)."""

    def __init__(self, queue: Any = None) -> None:
        self.queue = queue

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Report the step just finished."""
        if self.queue is None:
            print(f"step {trainer.global_step}", flush=True)
        else:
            self.queue.put(trainer.global_step)


class ValidationDraws(Callback):
    """Draw from every global RNG during validation, as a user's validation (dropout, metrics) may."""

    def on_validation_batch_end(self, *args: Any) -> None:
        """Draw once from torch, NumPy and Python."""
        torch.rand(3)
        np.random.rand(3)
        random.random()


def main(config: dict[str, Any], reports: Any = None) -> None:
    """Run one fit as ``config`` says and write its final state."""
    torch.set_num_threads(1)  # every fit alike (CPU reductions may depend on the thread count)
    torch.use_deterministic_algorithms(True)
    L.seed_everything(1234, verbose=False)
    dm = BouncingBallsDataModule(
        frames=4, size=8, patch_size=4, max_balls=1, n_train=6, n_val=2, n_test=2, batch_size=2, d_model=16, seed=3
    )
    model = CanvasModule(
        dm.schema,
        dm.region_formats,
        backbone_config={"depth": 2, "n_heads": 2},
        max_loops=2,
        num_train_timesteps=50,
        sample_metric_batches=1,
        sample_metric_steps=2,
    )
    total = int(config.get("total_steps", config.get("max_steps", 0)))
    callbacks: list[Callback] = [
        LoopCurriculum(total_steps=total),
        AttentionSharpening(beta_max=3.0, warmup_steps=3),
        RNGState(),
        ValidationDraws(),
    ]
    ckpt_dir = config.get("ckpt_dir")
    if config.get("every_n_train_steps"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="step-{step}",
                every_n_train_steps=config["every_n_train_steps"],
                save_top_k=-1,
                save_last=bool(config.get("save_last")),
            )
        )
    if config.get("every_n_epochs"):
        callbacks.append(
            ModelCheckpoint(dirpath=ckpt_dir, filename="epoch-{epoch}-{step}", every_n_epochs=1, save_top_k=-1)
        )
    if config.get("report_steps"):
        callbacks.append(ReportSteps(reports))
    val = bool(config.get("val"))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=config.get("max_steps", -1),
        max_epochs=config.get("max_epochs"),
        logger=False,
        enable_checkpointing=bool(ckpt_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=ckpt_dir or None,
        limit_val_batches=1.0 if val else 0,
        num_sanity_val_steps=1 if val else 0,
        callbacks=callbacks,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm, ckpt_path=config.get("ckpt_path"))
    torch.save(
        {
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "global_step": trainer.global_step,
            "callbacks": [c.state_dict() for c in callbacks[:2]],
            "warnings": [str(w.message) for w in caught],
        },
        config["out"],
    )


def run(config: dict[str, Any], reports: Any = None) -> None:
    """Run :func:`main`; on an error, write ``{"error": traceback}`` to ``out`` and exit with status 1."""
    try:
        main(config, reports)
    except BaseException:
        torch.save({"error": traceback.format_exc()}, config["out"])
        sys.exit(1)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
