"""Published module path ``canvas_engineering.canvas`` (canvas-engineering 0.1.0-0.5.0).

A compatibility alias: it re-exports the canvas names from the layered modules that define
them (``declare/``); nothing is defined here. See the README section "Migrating from the
published package" for what behaves differently.
"""

from __future__ import annotations

from canvas_engineering.declare.attention_vocabulary import ATTENTION_TYPES
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.schema import transfer_distance
from canvas_engineering.declare.spatiotemporal_canvas import SpatiotemporalCanvas

__all__ = ["ATTENTION_TYPES", "CanvasLayout", "RegionSpec", "SpatiotemporalCanvas", "transfer_distance"]
