"""Published module path ``canvas_engineering.schema``: ``CanvasSchema``.

A compatibility alias of :mod:`canvas_engineering.declare.schema`; nothing is defined here.
``CanvasSchema.from_json`` / ``from_dict`` also read the published files, and
``to_json(path, format="published")`` writes them.
"""

from __future__ import annotations

from canvas_engineering.declare.schema import CanvasSchema, transfer_distance

__all__ = ["CanvasSchema", "transfer_distance"]
