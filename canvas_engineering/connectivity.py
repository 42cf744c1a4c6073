"""Published module path ``canvas_engineering.connectivity`` (canvas-engineering 0.1.0-0.5.0).

A compatibility alias re-exporting ``Connection``, ``CanvasTopology`` and ``TemporalFill`` from
``canvas_engineering.declare.topology``; nothing is defined here.
"""

from __future__ import annotations

from canvas_engineering.declare.topology import CanvasTopology, Connection, TemporalFill

__all__ = ["CanvasTopology", "Connection", "TemporalFill"]
