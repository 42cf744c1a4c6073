"""Published module path ``canvas_engineering.curriculum``: ``CurriculumScheduler``.

A compatibility alias of :mod:`canvas_engineering.training.schedules` (usable without
Lightning; the Lightning callback is ``canvas_engineering.callbacks.LoopCurriculum``).
"""

from __future__ import annotations

from canvas_engineering.training.schedules import CurriculumScheduler

__all__ = ["CurriculumScheduler"]
