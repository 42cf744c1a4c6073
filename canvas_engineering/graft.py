"""Published module path ``canvas_engineering.graft``: grafting looped blocks and freeze strategies.

A compatibility alias of :mod:`canvas_engineering.integrations.cogvideox`; nothing is defined here.
"""

from __future__ import annotations

from canvas_engineering.integrations.cogvideox import freeze_full, freeze_half, freeze_none, graft_looped_blocks

__all__ = ["freeze_full", "freeze_half", "freeze_none", "graft_looped_blocks"]
