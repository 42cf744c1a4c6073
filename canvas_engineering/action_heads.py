"""Published module path ``canvas_engineering.action_heads``: ``ActionHead``.

A compatibility alias of :mod:`canvas_engineering.models.action_head`; nothing is defined here.
"""

from __future__ import annotations

from canvas_engineering.models.action_head import ActionHead

__all__ = ["ActionHead"]
