"""Loop curriculum and attention sharpening as Lightning callbacks.

:class:`LoopCurriculum` sets how many loops a looped model runs at each training step (a
:class:`~canvas_engineering.training.schedules.CurriculumScheduler`), and :class:`AttentionSharpening`
sets the per-loop inverse temperatures (a
:class:`~canvas_engineering.training.schedules.SharpeningSchedule`). Both drive any LightningModule
with ``set_loops(n)`` / ``set_betas(betas)`` and ``max_loops``, such as
:class:`~canvas_engineering.training.module.CanvasModule`. Their whole schedule lives in
``state_dict``, so a fit resumed from a Lightning checkpoint continues exactly where it
stopped.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from typing import Any, get_args

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from canvas_engineering.errors import CanvasValidationError, IncompatibleModelError
from canvas_engineering.training.schedules import CurriculumScheduler, SharpeningSchedule, SharpeningShape
from canvas_engineering.validation import check_choice, check_finite_float, check_int, check_non_negative_int

__all__ = ["AttentionSharpening", "LoopCurriculum"]


def _check_optional_positive_int(owner: str, name: str, value: object) -> None:
    if value is not None:
        check_int(value, f"{owner}: {name}", minimum=1, rule="None or an integer >= 1")


def _model_max_loops(owner: str, pl_module: pl.LightningModule, method: str, requested: int | None) -> int:
    """Return the loops to schedule: ``requested`` or the model's ``max_loops``, checked against the model."""
    missing = [
        n
        for n, ok in (
            (f"{method}()", callable(getattr(pl_module, method, None))),
            ("max_loops", hasattr(pl_module, "max_loops")),
        )
        if not ok
    ]
    if missing:
        msg = (
            f"{owner} needs a LightningModule with {method}() and max_loops (e.g. CanvasModule); "
            f"{type(pl_module).__name__} has no {' and no '.join(missing)}"
        )
        raise IncompatibleModelError(msg)
    available = int(pl_module.max_loops)
    if requested is None:
        return available
    if requested > available:
        msg = (
            f"{owner}: max_loops={requested} exceeds the model's max_loops={available}; "
            f"build the model with max_loops={requested} or pass max_loops<={available}"
        )
        raise CanvasValidationError(msg)
    return requested


def _default_total_steps(owner: str, trainer: pl.Trainer) -> int:
    """Training length in optimizer steps: ``max_steps`` when it alone bounds the fit, else Lightning's estimate."""
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1):
        total: float = trainer.max_steps
    else:
        total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total < 1:
        msg = (
            f"{owner}: total_steps=None but the trainer's length is unknown ({total}: max_steps={trainer.max_steps}, "
            f"max_epochs={trainer.max_epochs}); pass total_steps= or set Trainer(max_steps=...)"
        )
        raise CanvasValidationError(msg)
    return int(total)


class _RestoresOutsideFit(Callback):
    """Applies a restored schedule state in validate/test/predict runs started from a checkpoint."""

    def _restore_outside_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the state the checkpoint stopped at (subclasses)."""

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_outside_fit(trainer, pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_outside_fit(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_outside_fit(trainer, pl_module)


class LoopCurriculum(_RestoresOutsideFit):
    """Ramp the active loop count of a looped model from 1 to ``max_loops`` during training.

    Before every training batch the callback calls ``pl_module.set_loops(n)`` with
    ``n = CurriculumScheduler(max_loops, total_steps, warmup_fraction).get_loops(global_step)``
    (equal phases: with 3 loops over 5000 steps, steps 0-1666 run 1 loop, 1667-3333 run 2,
    3334 on run 3) and logs ``loops/active``. It also sets the loops at fit start, so a
    resumed fit validates with the loop count it stopped at, and ``trainer.validate`` /
    ``test`` / ``predict`` with ``ckpt_path=`` run the checkpoint's loop count.

    Resolved at fit start, then fixed: ``max_loops`` defaults to the model's ``max_loops``, and
    ``total_steps`` to ``Trainer(max_steps=...)`` (or ``trainer.estimated_stepping_batches``
    when epochs bound the fit), broadcast from rank 0 so every rank runs the same schedule.

    Every schedule quantity is in :meth:`state_dict`. A fit resumed from a Lightning checkpoint
    continues the checkpoint's schedule: its arguments and resolved ``total_steps`` replace
    this instance's (as ``EarlyStopping`` restores ``patience``), so resuming with a larger
    ``max_steps`` does not stretch the ramp.

    Args:
        max_loops: loop count at the end of the ramp (>= 1; ``None``: the model's ``max_loops``).
        total_steps: optimizer steps over which to ramp (>= 1; ``None``: the trainer's length).
        warmup_fraction: share of ``total_steps`` run with one loop before the ramp, in ``[0, 1)``.

    Attributes:
        scheduler: the :class:`~canvas_engineering.training.schedules.CurriculumScheduler` in use
            (``None`` before the first fit starts).
        current_loops: the loop count last set on the model (0 before any).
        last_step: the ``global_step`` it was set for (-1 before any).

    Raises:
        CanvasValidationError: an argument is out of range; at fit start, ``max_loops`` exceeds the
            model's, or ``total_steps`` is ``None`` and the trainer has no finite length.
        IncompatibleModelError: at fit start, the LightningModule has no ``set_loops`` / ``max_loops``.

    Example::

        >>> from lightning import Trainer
        >>> from canvas_engineering.callbacks import LoopCurriculum
        >>> curriculum = LoopCurriculum(total_steps=5000)  # max_loops from the model
        >>> trainer = Trainer(max_steps=5000, callbacks=[curriculum], logger=False)  # doctest: +SKIP

    """

    def __init__(
        self, max_loops: int | None = None, total_steps: int | None = None, warmup_fraction: float = 0.0
    ) -> None:
        super().__init__()
        _check_optional_positive_int("LoopCurriculum", "max_loops", max_loops)
        _check_optional_positive_int("LoopCurriculum", "total_steps", total_steps)
        self.warmup_fraction = check_finite_float(
            warmup_fraction,
            "LoopCurriculum: warmup_fraction",
            minimum=0,
            maximum=1,
            open_max=True,
            rule="a number in [0, 1)",
        )
        self.max_loops = max_loops
        self.total_steps = total_steps
        self.scheduler: CurriculumScheduler | None = None
        self.current_loops = 0
        self.last_step = -1
        self._restored = False

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        assert self.scheduler is not None  # set in on_fit_start / load_state_dict
        step = trainer.global_step
        n = self.scheduler.get_loops(step)
        pl_module.set_loops(n)
        self.current_loops, self.last_step = n, step
        return n

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored and self.scheduler is not None:
            _model_max_loops("LoopCurriculum", pl_module, "set_loops", self.scheduler.max_loops)
        else:
            max_loops = _model_max_loops("LoopCurriculum", pl_module, "set_loops", self.max_loops)
            total = (
                self.total_steps if self.total_steps is not None else _default_total_steps("LoopCurriculum", trainer)
            )
            total = int(trainer.strategy.broadcast(total, src=0))
            self.scheduler = CurriculumScheduler(max_loops, total, self.warmup_fraction)
        self._restored = False
        self._apply(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restored = False  # a later fit without a checkpoint resolves the schedule afresh

    def _restore_outside_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validate/test/predict(ckpt_path=...): run the loop count the checkpoint stopped at
        if trainer.state.fn != TrainerFn.FITTING and self._restored and self.current_loops > 0:
            pl_module.set_loops(self.current_loops)

    @override
    def on_train_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
    ) -> None:
        n = self._apply(trainer, pl_module)
        pl_module.log("loops/active", float(n), on_step=True, on_epoch=False, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        scheduler = self.scheduler
        return {
            "max_loops": self.max_loops,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
            "resolved_max_loops": scheduler.max_loops if scheduler is not None else None,
            "resolved_total_steps": scheduler.total_steps if scheduler is not None else None,
            "current_loops": self.current_loops,
            "last_step": self.last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.max_loops = state_dict.get("max_loops", self.max_loops)
        self.total_steps = state_dict.get("total_steps", self.total_steps)
        self.warmup_fraction = float(state_dict.get("warmup_fraction", self.warmup_fraction))
        self.current_loops = int(state_dict.get("current_loops", self.current_loops))
        self.last_step = int(state_dict.get("last_step", self.last_step))
        max_loops, total = state_dict.get("resolved_max_loops"), state_dict.get("resolved_total_steps")
        if max_loops is not None and total is not None:
            self.scheduler = CurriculumScheduler(int(max_loops), int(total), self.warmup_fraction)
            self._restored = True


class AttentionSharpening(_RestoresOutsideFit):
    """Set per-loop attention sharpening factors (inverse temperatures) on a looped model.

    Loop ``i`` multiplies its attention logits by ``beta_i`` of a
    :class:`~canvas_engineering.training.schedules.SharpeningSchedule` (``beta_min`` at loop 0 up to
    ``beta_max`` at the last loop: with 3 loops, 1.0 / 2.5 / 4.0). With ``warmup_steps`` > 0
    every beta starts at 1.0 (plain softmax) and moves linearly to its scheduled value over
    the first ``warmup_steps`` optimizer steps. Before every training batch the callback calls
    ``pl_module.set_betas(betas)`` and logs ``sharpening/beta_<i>``; it also sets them at fit
    start, and ``trainer.validate`` / ``test`` / ``predict`` with ``ckpt_path=`` use the
    checkpoint's betas.

    ``max_loops`` defaults to the model's. Every schedule quantity is in :meth:`state_dict`,
    and a resumed fit continues the checkpoint's schedule (its arguments replace this
    instance's).

    Args:
        beta_min: beta of loop 0 (> 0).
        beta_max: beta of the last loop (> 0).
        warmup_steps: optimizer steps of the ramp from all-1.0 to the schedule (>= 0).
        schedule: ``"linear"``, ``"exponential"`` or ``"cosine"`` interpolation across loops.
        max_loops: loops to schedule (``None``: the model's ``max_loops``); when the model
            has more, its extra loops get the last loop's beta.

    Attributes:
        schedule_: the :class:`~canvas_engineering.training.schedules.SharpeningSchedule` in use
            (``None`` before the first fit starts).
        current_betas: the betas last set on the model (empty before any).
        last_step: the ``global_step`` they were set for (-1 before any).

    Raises:
        CanvasValidationError: an argument is out of range; at fit start, ``max_loops`` exceeds the model's.
        IncompatibleModelError: at fit start, the LightningModule has no ``set_betas`` / ``max_loops``.

    Example::

        >>> from canvas_engineering.callbacks import AttentionSharpening
        >>> sharpening = AttentionSharpening(beta_min=1.0, beta_max=4.0, warmup_steps=500)
        >>> sharpening.beta_max
        4.0

    """

    def __init__(
        self,
        beta_min: float = 1.0,
        beta_max: float = 4.0,
        warmup_steps: int = 0,
        schedule: SharpeningShape = "linear",
        max_loops: int | None = None,
    ) -> None:
        super().__init__()
        _check_optional_positive_int("AttentionSharpening", "max_loops", max_loops)
        self.beta_min = check_finite_float(beta_min, "AttentionSharpening: beta_min", minimum=0, open_min=True)
        self.beta_max = check_finite_float(beta_max, "AttentionSharpening: beta_max", minimum=0, open_min=True)
        self.warmup_steps = check_non_negative_int(warmup_steps, "AttentionSharpening: warmup_steps")
        self.schedule: SharpeningShape = check_choice(
            schedule, "AttentionSharpening: schedule", get_args(SharpeningShape)
        )
        self.max_loops = max_loops
        self.schedule_: SharpeningSchedule | None = None
        self.current_betas: list[float] = []
        self.last_step = -1
        self._restored = False

    def _build(self, max_loops: int) -> SharpeningSchedule:
        return SharpeningSchedule(max_loops, self.beta_min, self.beta_max, self.schedule, self.warmup_steps)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[float]:
        assert self.schedule_ is not None  # set in on_fit_start / load_state_dict
        step = trainer.global_step
        betas = self.schedule_.betas_at(step)
        # a model with more loops than scheduled keeps the last beta for the extra loops
        betas = betas + [betas[-1]] * (int(pl_module.max_loops) - len(betas))
        pl_module.set_betas(betas)
        self.current_betas, self.last_step = betas, step
        return betas

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored and self.schedule_ is not None:
            _model_max_loops("AttentionSharpening", pl_module, "set_betas", self.schedule_.max_loops)
        else:
            self.schedule_ = self._build(
                _model_max_loops("AttentionSharpening", pl_module, "set_betas", self.max_loops)
            )
        self._restored = False
        self._apply(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restored = False  # a later fit without a checkpoint resolves the schedule afresh

    def _restore_outside_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validate/test/predict(ckpt_path=...): use the betas the checkpoint stopped at
        if trainer.state.fn != TrainerFn.FITTING and self._restored and self.current_betas:
            pl_module.set_betas(self.current_betas)

    @override
    def on_train_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
    ) -> None:
        betas = self._apply(trainer, pl_module)
        pl_module.log_dict(
            {f"sharpening/beta_{i}": float(b) for i, b in enumerate(betas)}, on_step=True, on_epoch=False, batch_size=1
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule,
            "max_loops": self.max_loops,
            "resolved_max_loops": self.schedule_.max_loops if self.schedule_ is not None else None,
            "current_betas": list(self.current_betas),
            "last_step": self.last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.beta_min = float(state_dict.get("beta_min", self.beta_min))
        self.beta_max = float(state_dict.get("beta_max", self.beta_max))
        self.warmup_steps = int(state_dict.get("warmup_steps", self.warmup_steps))
        self.schedule = state_dict.get("schedule", self.schedule)
        self.max_loops = state_dict.get("max_loops", self.max_loops)
        self.current_betas = [float(b) for b in state_dict.get("current_betas", self.current_betas)]
        self.last_step = int(state_dict.get("last_step", self.last_step))
        resolved = state_dict.get("resolved_max_loops")
        if resolved is not None:
            self.schedule_ = self._build(int(resolved))
            self._restored = True
