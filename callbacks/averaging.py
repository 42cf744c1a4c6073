"""``EMAWeights``: an exponential moving average of the weights, validated and kept at the end.

A thin, YAML-configurable subclass of Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`
with torch's EMA averaging function: during validation and after training the model holds
the averaged weights (Lightning swaps them in), and checkpoints carry the average.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from canvas_engineering.errors import CanvasValidationError

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
        number = isinstance(decay, (int, float)) and not isinstance(decay, bool)
        if not number or not math.isfinite(decay) or not 0 < decay < 1:
            msg = f"EMAWeights: decay={decay!r} must be a number in (0, 1)"
            raise CanvasValidationError(msg)
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            msg = f"EMAWeights: start_step={start_step!r} must be an integer >= 0"
            raise CanvasValidationError(msg)
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(float(decay)))
        self.decay = float(decay)
        self.start_step = start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after every optimiser step from ``start_step`` on."""
        return step_idx is not None and step_idx >= self.start_step
