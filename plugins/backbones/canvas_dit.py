"""The ``canvas_dit`` backbone: the from-scratch :class:`~canvas_engineering.models.dit.CanvasDiT`."""

from __future__ import annotations

import inspect
from typing import Any

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.dit import CanvasDiT

__all__ = ["build_canvas_dit"]


def build_canvas_dit(layout: CanvasLayout, topology: CanvasTopology, **config: Any) -> CanvasDiT:
    """Build a :class:`CanvasDiT` over ``layout`` and ``topology``.

    Args:
        layout: the canvas layout.
        topology: the attention graph.
        **config: keyword arguments of :class:`CanvasDiT` (``depth``, ``n_heads``,
            ``max_loops``, ``loop_blocks``, ``checkpoint``, ``kernel``, ...).

    Raises:
        CanvasValidationError: an unknown option (the message lists the accepted ones) or a
            bad value.

    """
    accepted = [n for n in inspect.signature(CanvasDiT).parameters if n not in ("layout", "topology")]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        msg = f"backbone 'canvas_dit': unknown option(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        raise CanvasValidationError(msg)
    return CanvasDiT(layout, topology, **config)
