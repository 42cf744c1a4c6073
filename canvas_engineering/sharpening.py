"""Published module path ``canvas_engineering.sharpening``: ``SharpeningSchedule``.

A compatibility alias of :mod:`canvas_engineering.training.schedules` (usable without
Lightning; the Lightning callback is ``canvas_engineering.callbacks.AttentionSharpening``).
"""

from __future__ import annotations

from canvas_engineering.training.schedules import SharpeningSchedule

__all__ = ["SharpeningSchedule"]
