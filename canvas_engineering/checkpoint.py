"""Published module path ``canvas_engineering.checkpoint``: loop-only checkpoints.

A compatibility alias of :mod:`canvas_engineering.models.loop_checkpoint`; nothing is defined here.
"""

from __future__ import annotations

from canvas_engineering.models.loop_checkpoint import load_loop_checkpoint, save_loop_checkpoint

__all__ = ["load_loop_checkpoint", "save_loop_checkpoint"]
