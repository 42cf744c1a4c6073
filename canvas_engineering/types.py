"""Published module path ``canvas_engineering.types``: the typed layer (``Field``, ``compile_schema``).

A compatibility alias of :mod:`canvas_engineering.typed`. ``BoundField`` is our
:class:`~canvas_engineering.typed.fields.RegionView` (a compiled field's ``place`` / ``extract`` /
``indices`` / ``num_positions``). ``LayoutStrategy`` and ``ConnectivityPolicy`` are string
enums over the option names :func:`compile_schema` takes (``layout_strategy="packed"`` and
``LayoutStrategy.PACKED`` are the same value), so code spelling the published enum members
keeps working; the published ``ConnectivityPolicy(intra=..., array_element=..., temporal=...)``
dataclass and ``LayoutStrategy.INTERLEAVED`` have no equivalent here (README: "Migrating from the
published package").
"""

from __future__ import annotations

from enum import StrEnum
from typing import get_args

from canvas_engineering.typed.fields import BoundSchema, Field, compile_schema
from canvas_engineering.typed.fields import RegionView as BoundField
from canvas_engineering.typed.packing import CONNECTIVITY_POLICIES, LAYOUT_STRATEGIES
from canvas_engineering.typed.packing import ConnectivityPolicy as _PolicyName
from canvas_engineering.typed.packing import LayoutStrategy as _StrategyName

__all__ = ["BoundField", "BoundSchema", "ConnectivityPolicy", "Field", "LayoutStrategy", "compile_schema"]


class LayoutStrategy(StrEnum):
    """How ``compile_schema`` arranges fields on the (H, W) grid (members equal the option strings)."""

    #: shelf packing in declaration order (the default)
    PACKED = "packed"
    #: one field per row band
    ROWS = "rows"


class ConnectivityPolicy(StrEnum):
    """How ``compile_schema`` wires the compiled fields (members equal the option strings)."""

    #: parents and children of the type tree read each other; siblings read each other
    HIERARCHICAL = "hierarchical"
    #: the hierarchical pairs with frame offsets: no query reads a later frame
    CAUSAL = "causal"
    #: every field attends every field
    DENSE = "dense"
    #: self-attention only
    ISOLATED = "isolated"


# The enums and the option names of the typed layer are one list: a new option there must get
# a member here (checked on import, so the two cannot drift apart silently).
if not tuple(LayoutStrategy) == LAYOUT_STRATEGIES == get_args(_StrategyName):
    raise ImportError(f"canvas_engineering.types.LayoutStrategy lists {list(LayoutStrategy)}, not {LAYOUT_STRATEGIES}")
if not tuple(ConnectivityPolicy) == CONNECTIVITY_POLICIES == get_args(_PolicyName):
    msg = f"canvas_engineering.types.ConnectivityPolicy lists {list(ConnectivityPolicy)}, not {CONNECTIVITY_POLICIES}"
    raise ImportError(msg)
