"""``EMAWeights``: an exponential moving average of the weights, validated and kept at the end.

A thin, YAML-configurable subclass of Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`
with torch's EMA averaging function: during validation and after training the model holds
the averaged weights (Lightning swaps them in), and checkpoints carry the average.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from canvas_engineering.validation import check_finite_float, check_non_negative_int

__all__ = ["EMAWeights"]


class EMAWeights(WeightAveraging):
    """Exponential moving average of the weights: ``avg = decay * avg + (1 - decay) * w``.

    Args:
        decay: the average's decay per update, in ``(0, 1)``.
        start_step: first optimiser step that updates the average (earlier weights are noise).

    Raises:
        CanvasValidationError: ``decay`` outside ``(0, 1)`` or a negative ``start_step``.

    """

    def __init__(self, decay: float = 0.995, start_step: int = 0) -> None:
        check_finite_float(
            decay, "EMAWeights: decay", minimum=0, maximum=1, open_min=True, open_max=True, rule="a number in (0, 1)"
        )
        check_non_negative_int(start_step, "EMAWeights: start_step")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(float(decay)))
        self.decay = float(decay)
        self.start_step = start_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build the averaged copy; Lightning's sharding warning only where a device mesh shards the model."""
        with warnings.catch_warnings():
            if getattr(pl_module, "device_mesh", None) is None:
                # CanvasModule overrides configure_model only to shard over a device mesh: without one nothing
                # is sharded, so Lightning's warning that the average skips sharding does not apply.
                warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model")
            super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after every optimiser step from ``start_step`` on."""
        return step_idx is not None and step_idx >= self.start_step
