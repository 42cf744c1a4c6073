"""Loop schedules: how many loops run at a training step, and how sharp each loop attends.

Both are plain objects with no Lightning dependency, so a hand-written training loop can use
them directly; :mod:`canvas_engineering.callbacks` drives a ``CanvasModule`` with them.

* :class:`CurriculumScheduler` ramps the active loop count from 1 to ``max_loops`` over
  ``total_steps`` in equal phases (the seed README: "ramp loop count 1→3 during training").
* :class:`SharpeningSchedule` gives loop ``i`` an inverse temperature ``beta_i`` that grows
  from ``beta_min`` (soft, broad gradients) to ``beta_max`` (sharp) across the loops.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, get_args

from canvas_engineering.validation import (
    check_choice,
    check_finite_float,
    check_int,
    check_non_negative_int,
    check_positive_int,
)

__all__ = ["CurriculumScheduler", "SharpeningSchedule", "SharpeningShape"]

#: interpolation of :class:`SharpeningSchedule` between ``beta_min`` and ``beta_max``
SharpeningShape = Literal["linear", "exponential", "cosine"]


class CurriculumScheduler:
    """Ramp the number of active loops from 1 to ``max_loops`` over training.

    Training is divided into ``max_loops`` equal phases; phase ``k`` (0-based) runs ``k + 1``
    loops, and every step at or after ``total_steps`` runs ``max_loops``. With
    ``warmup_fraction`` > 0 the first ``floor(warmup_fraction * total_steps)`` steps run one
    loop and the remaining steps are divided into the phases. The phase of ``step`` is
    ``(step - warmup) * max_loops // (total_steps - warmup)``, computed in integers, so phase
    boundaries never move with floating-point rounding.

    Args:
        max_loops: the loop count reached at the end of the ramp (>= 1).
        total_steps: training steps over which to ramp (>= 1).
        warmup_fraction: share of ``total_steps`` spent at one loop before the ramp starts,
            in ``[0, 1)``.

    Raises:
        CanvasValidationError: an argument is out of range (the message names it and its value).

    Example::

        >>> scheduler = CurriculumScheduler(max_loops=3, total_steps=5000)
        >>> [scheduler.get_loops(s) for s in (0, 1666, 1667, 3333, 3334, 4999, 5000)]
        [1, 1, 2, 2, 3, 3, 3]
        >>> scheduler.boundaries
        [1667, 3334]

    """

    def __init__(self, max_loops: int = 3, total_steps: int = 5000, warmup_fraction: float = 0.0) -> None:
        self.max_loops = check_positive_int(max_loops, "CurriculumScheduler: max_loops")
        self.total_steps = check_positive_int(total_steps, "CurriculumScheduler: total_steps")
        self.warmup_fraction = check_finite_float(
            warmup_fraction,
            "CurriculumScheduler: warmup_fraction",
            minimum=0,
            maximum=1,
            open_max=True,
            rule="a number in [0, 1)",
        )

    @property
    def warmup_steps(self) -> int:
        """Steps run at one loop before the ramp: ``floor(warmup_fraction * total_steps)``."""
        return int(math.floor(self.warmup_fraction * self.total_steps))

    def get_loops(self, step: int) -> int:
        """Active loops at training step ``step`` (0-based; steps past ``total_steps`` run ``max_loops``).

        Raises:
            CanvasValidationError: ``step`` is not an integer >= 0.

        """
        step = check_non_negative_int(step, "CurriculumScheduler.get_loops: step")
        warmup = self.warmup_steps
        if step < warmup:
            return 1
        phase = (step - warmup) * self.max_loops // (self.total_steps - warmup)
        return min(phase, self.max_loops - 1) + 1

    @property
    def boundaries(self) -> list[int]:
        """The first step of each phase after the first: ``get_loops`` is ``k + 2`` from ``boundaries[k]`` on."""
        warmup, span = self.warmup_steps, self.total_steps - self.warmup_steps
        # smallest s with (s - warmup) * max_loops >= k * span, i.e. ceil(k * span / max_loops)
        return [warmup + -(-k * span // self.max_loops) for k in range(1, self.max_loops)]

    def step(self, looped_blocks: Iterable[Any] | Any, step: int) -> int:
        """Set the loop count of ``looped_blocks`` for ``step`` and return it.

        Args:
            looped_blocks: an object with ``set_loops(n)`` (a ``CanvasModule``, a backbone) or
                an iterable of them (e.g. ``backbone.looped_blocks``); items without
                ``set_loops`` are skipped.
            step: the training step (0-based).

        Returns:
            The active loop count, :meth:`get_loops` of ``step``.

        """
        n = self.get_loops(step)
        targets = [looped_blocks] if hasattr(looped_blocks, "set_loops") else list(looped_blocks)
        for block in targets:
            if hasattr(block, "set_loops"):
                block.set_loops(min(n, getattr(block, "max_loops", n)))
        return n

    def state_dict(self) -> dict[str, Any]:
        """Every schedule quantity, for checkpoints."""
        return {"max_loops": self.max_loops, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction}

    def __repr__(self) -> str:
        return (
            f"CurriculumScheduler(max_loops={self.max_loops}, total_steps={self.total_steps}, "
            f"warmup_fraction={self.warmup_fraction})"
        )


class SharpeningSchedule:
    """Per-loop inverse temperature (beta): soft attention in early loops, sharp in late ones.

    Loop ``i`` of ``max_loops`` gets ``beta(i)``, interpolated at ``t = i / (max_loops - 1)``
    between ``beta_min`` (loop 0) and ``beta_max`` (the last loop): ``"linear"``
    ``beta_min + t * (beta_max - beta_min)``, ``"exponential"``
    ``beta_min * (beta_max / beta_min) ** t``, or ``"cosine"``
    ``beta_min + (beta_max - beta_min) * (1 - cos(pi * t)) / 2``. With one loop, beta is
    ``beta_min``. Beta multiplies the attention logits of that loop.

    With ``warmup_steps`` > 0, :meth:`betas_at` ramps every loop linearly from 1.0 (plain
    softmax) at step 0 to its scheduled beta at ``warmup_steps``.

    Args:
        max_loops: loops of the model (>= 1).
        beta_min: beta of loop 0 (> 0).
        beta_max: beta of the last loop (> 0).
        schedule: ``"linear"``, ``"exponential"`` or ``"cosine"``.
        warmup_steps: training steps over which :meth:`betas_at` ramps from 1.0 (>= 0).

    Raises:
        CanvasValidationError: an argument is out of range (the message names it and its value).

    Example::

        >>> schedule = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=4.0)
        >>> schedule.betas
        [1.0, 2.5, 4.0]
        >>> schedule(1)
        2.5
        >>> SharpeningSchedule(3, 1.0, 4.0, warmup_steps=10).betas_at(5)
        [1.0, 1.75, 2.5]

    """

    def __init__(
        self,
        max_loops: int = 3,
        beta_min: float = 1.0,
        beta_max: float = 4.0,
        schedule: SharpeningShape = "linear",
        warmup_steps: int = 0,
    ) -> None:
        self.max_loops = check_positive_int(max_loops, "SharpeningSchedule: max_loops")
        self.beta_min = check_finite_float(beta_min, "SharpeningSchedule: beta_min", minimum=0, open_min=True)
        self.beta_max = check_finite_float(beta_max, "SharpeningSchedule: beta_max", minimum=0, open_min=True)
        self.schedule: SharpeningShape = check_choice(
            schedule, "SharpeningSchedule: schedule", get_args(SharpeningShape)
        )
        self.warmup_steps = check_non_negative_int(warmup_steps, "SharpeningSchedule: warmup_steps")

    def beta(self, loop_idx: int) -> float:
        """Beta of loop ``loop_idx`` (0-based).

        Raises:
            CanvasValidationError: ``loop_idx`` is not an integer in ``[0, max_loops)``.

        """
        check_int(
            loop_idx,
            "SharpeningSchedule.beta: loop_idx",
            minimum=0,
            maximum=self.max_loops - 1,
            rule=f"an integer in [0, max_loops={self.max_loops})",
        )
        if self.max_loops == 1:
            return self.beta_min
        t = loop_idx / (self.max_loops - 1)  # 0 at loop 0, 1 at the last loop
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        if self.schedule == "exponential":
            return self.beta_min * (self.beta_max / self.beta_min) ** t
        return self.beta_min + 0.5 * (self.beta_max - self.beta_min) * (1.0 - math.cos(math.pi * t))

    __call__ = beta

    @property
    def betas(self) -> list[float]:
        """Beta of every loop, ``[beta(0), ..., beta(max_loops - 1)]``."""
        return [self.beta(i) for i in range(self.max_loops)]

    def warmup_progress(self, step: int) -> float:
        """Share of the warm-up done at ``step``: ``min(1, step / warmup_steps)`` (1.0 without warm-up)."""
        step = check_non_negative_int(step, "SharpeningSchedule.warmup_progress: step")
        if self.warmup_steps == 0:
            return 1.0
        return min(1.0, step / self.warmup_steps)

    def betas_at(self, step: int) -> list[float]:
        """Per-loop betas at training step ``step``: ``1 + progress * (beta_i - 1)`` (see :meth:`warmup_progress`)."""
        progress = self.warmup_progress(step)
        if progress == 1.0:
            return self.betas
        return [1.0 + progress * (b - 1.0) for b in self.betas]

    def state_dict(self) -> dict[str, Any]:
        """Every schedule quantity, for checkpoints."""
        return {
            "max_loops": self.max_loops,
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "schedule": self.schedule,
            "warmup_steps": self.warmup_steps,
        }

    def __repr__(self) -> str:
        return (
            f"SharpeningSchedule(max_loops={self.max_loops}, beta_min={self.beta_min}, beta_max={self.beta_max}, "
            f"schedule={self.schedule!r}, warmup_steps={self.warmup_steps})"
        )
