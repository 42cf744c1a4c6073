"""``hp_metric``: the validation loss in TensorBoard's HPARAMS view.

Lightning's ``TensorBoardLogger`` records the hyper-parameters with a placeholder
``hp_metric`` of -1; :class:`HParamsMetric` logs the monitored metric (``val/loss`` by
default) under that name after every validation run, so runs compare by their validation
loss in the HPARAMS tab.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from canvas_engineering.errors import CanvasValidationError

__all__ = ["HParamsMetric"]


class HParamsMetric(Callback):
    """Log ``hp_metric`` = the monitored metric after every validation run (not the sanity check).

    Args:
        monitor: the metric logged as ``hp_metric`` (a key of ``trainer.callback_metrics``).

    Raises:
        CanvasValidationError: ``monitor`` is empty.

    """

    def __init__(self, monitor: str = "val/loss") -> None:
        if not isinstance(monitor, str) or not monitor:
            msg = f"HParamsMetric: monitor={monitor!r} must name a logged metric, e.g. 'val/loss'"
            raise CanvasValidationError(msg)
        self.monitor = monitor

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the epoch's metrics are reduced: callback_metrics hold this run's value, not the last one
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics({"hp_metric": float(value)}, step=trainer.global_step)
