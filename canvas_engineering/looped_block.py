"""Published module path ``canvas_engineering.looped_block``: ``LoopedBlockWrapper``.

A compatibility alias of :mod:`canvas_engineering.models.looped`; nothing is defined here.
"""

from __future__ import annotations

from canvas_engineering.models.looped import LoopedBlockWrapper

__all__ = ["LoopedBlockWrapper"]
