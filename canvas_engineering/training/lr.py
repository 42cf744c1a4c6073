"""Optimiser and learning-rate schedule: AdamW over trainable parameters, warm-up, cosine decay."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from canvas_engineering.errors import CanvasValidationError, PrecisionError

__all__ = ["WarmupCosine", "adamw_with_schedule"]


class WarmupCosine:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Args:
        warmup: warm-up steps (0: none).
        total: the last step (``None``: no decay after warm-up).

    """

    def __init__(self, warmup: int, total: int | None) -> None:
        self.warmup, self.total = int(warmup), total

    def __call__(self, step: int) -> float:
        """Return the factor at optimiser step ``step`` (0-based)."""
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.total is None:
            return factor
        progress = min(1.0, max(0.0, (step - self.warmup) / max(1, self.total - self.warmup)))
        return factor * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_with_schedule(
    parameters: Iterable[torch.nn.Parameter], hparams: Mapping[str, Any], trainer: Any = None
) -> torch.optim.Optimizer | dict[str, Any]:
    """Build AdamW over the trainable ``parameters`` (decay on matrices only) and its schedule.

    Args:
        parameters: every parameter; those without ``requires_grad`` are left out.
        hparams: ``lr``, ``weight_decay``, ``warmup_steps`` (linear warm-up) and ``lr_decay``
            (``"cosine"``: to 0 at the trainer's last step).
        trainer: the Lightning trainer (its ``estimated_stepping_batches`` ends a cosine decay).

    Returns:
        The optimiser alone when there is no schedule, else Lightning's
        ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": "step"}}``.

    Raises:
        CanvasValidationError: a cosine decay without a finite run length.
        PrecisionError: a trainable parameter is float16 (Lightning's ``"16-true"``, or
            ``module.half()``): AdamW's ``eps`` (1e-8) underflows to 0 in float16, so a weight
            whose gradient is 0 becomes NaN on the first step. The message names the precisions
            that train.

    """
    params = [p for p in parameters if p.requires_grad]
    half = [p for p in params if p.dtype == torch.float16]
    if half:
        msg = (
            f"AdamW cannot train float16 weights ({len(half)} of {len(params)} trainable parameters are "
            "torch.float16, e.g. from precision='16-true' or module.half()): its eps=1e-8 underflows to 0 in "
            "float16 and the first step turns weights to NaN. Use precision='bf16-true' (bfloat16 weights), "
            "'16-mixed' or 'bf16-mixed' (float32 weights, half-precision compute), or '32-true'"
        )
        raise PrecisionError(msg)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": hparams["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=hparams["lr"])
    warmup, cosine = hparams["warmup_steps"], hparams["lr_decay"] == "cosine"
    if not warmup and not cosine:
        return optimizer
    total = None
    if cosine:
        steps = trainer.estimated_stepping_batches if trainer is not None else None
        if steps is None or not math.isfinite(steps) or int(steps) <= 0:
            msg = "CanvasModule(lr_decay='cosine') needs a finite run length: set Trainer(max_steps=...) or max_epochs"
            raise CanvasValidationError(msg)
        total = int(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
