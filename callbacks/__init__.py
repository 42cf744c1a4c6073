"""Lightning callbacks for canvas models (installed as ``canvas_engineering.callbacks``).

* :class:`LoopCurriculum`: ramp the active loop count from 1 to ``max_loops`` during training.
* :class:`AttentionSharpening`: per-loop attention inverse temperatures (soft to sharp).
* :class:`LoopCheckpoint`: loop-only parameter files every N steps and at the end of training.
* :class:`RNGState`: random-generator states in Lightning checkpoints, for bit-exact resumes.
* :class:`CanvasPictures`: layout, attention mask and predictions vs targets in TensorBoard.
* :class:`EMAWeights`: an exponential moving average of the weights (Lightning's ``WeightAveraging``).
* :class:`CanvasPredictionWriter`: ``predict_step``'s outputs as safetensors files with a JSON index.
* :class:`HParamsMetric`: the validation loss as TensorBoard's ``hp_metric``.

Example::

    >>> from lightning import Trainer
    >>> from canvas_engineering.callbacks import AttentionSharpening, LoopCurriculum
    >>> callbacks = [LoopCurriculum(total_steps=5000), AttentionSharpening(beta_max=4.0)]
    >>> trainer = Trainer(max_steps=5000, callbacks=callbacks)  # doctest: +SKIP

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from canvas_engineering.callbacks.averaging import EMAWeights
from canvas_engineering.callbacks.checkpoints import LoopCheckpoint, RNGState
from canvas_engineering.callbacks.loops import AttentionSharpening, LoopCurriculum
from canvas_engineering.callbacks.metrics import HParamsMetric
from canvas_engineering.callbacks.pictures import CanvasPictures, prediction_figure
from canvas_engineering.callbacks.predictions import CanvasPredictionWriter, flatten_prediction

__all__ = [
    "AttentionSharpening",
    "CanvasPictures",
    "CanvasPredictionWriter",
    "EMAWeights",
    "HParamsMetric",
    "LoopCheckpoint",
    "LoopCurriculum",
    "RNGState",
    "flatten_prediction",
    "prediction_figure",
]
