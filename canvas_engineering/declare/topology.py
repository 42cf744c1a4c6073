"""``Connection``, ``TemporalFill`` and ``CanvasTopology``: which region attends to which.

Temporal semantics (what :func:`canvas_engineering.compile_topology` implements)
---------------------------------------------------------------------------------
Every position has a *real time*: a region whose first canvas frame is ``t0`` and whose
period is ``p`` puts its ``k``-th frame at real time ``t0 + k * p``. For a connection
``src -> dst`` (``src`` positions are queries, ``dst`` positions keys/values):

* ``t_src is None and t_dst is None``: every src position attends every dst position.
* otherwise, for every reference frame ``ref`` in ``[0, T_c)``, src positions at real time
  ``ref + t_src`` (every src position if ``t_src is None``) read dst at real time
  ``rho = ref + t_dst`` (every dst position if ``t_dst is None``). A ``rho`` outside
  ``[0, T_c)`` is skipped. ``T_c`` is ``T``, or one past the last real frame of ``src`` or
  ``dst`` when a slow region's real frames (``t0 + k * period``) reach beyond ``T``.
* reading dst at ``rho``: the dst frame at exactly ``rho`` if there is one. Otherwise, if
  ``rho`` lies inside the dst region's span (from its first frame up to ``period`` past its
  last one), the connection's ``temporal_fill`` decides: ``DROP`` reads nothing, ``HOLD``
  reads the latest dst frame before ``rho``, ``INTERPOLATE`` reads the dst frames just
  before and just after ``rho`` with the connection weight split by inverse distance of
  ``interpolation_order`` (``w_i ∝ d_i ** -order``; only the earlier frame past the last one).
  Outside the span nothing is read.
* where several connections (or several reference frames) allow the same pair, the mask
  holds the largest weight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from canvas_engineering.declare.attention_vocabulary import DEFAULT_ATTENTION, check_attention_type
from canvas_engineering.declare.region import MAX_POSITIONS
from canvas_engineering.errors import CanvasValidationError, ConnectionValidationError
from canvas_engineering.validation import check_finite_float, check_int

if TYPE_CHECKING:
    import torch

    from canvas_engineering.compilation.compiler import AttentionPlan
    from canvas_engineering.declare.layout import CanvasLayout

__all__ = [
    "MAX_CONNECTION_WEIGHT",
    "MIN_CONNECTION_WEIGHT",
    "AttentionOp",
    "CanvasTopology",
    "Connection",
    "TemporalFill",
    "set_plan_compiler",
]

#: Smallest and largest connection weight. Weights reach the kernels in the mask's dtype,
#: float32 tables and, under mixed precision, float16/bfloat16 views: as weights (types that
#: scale their outputs, sigmoid/top-k mixing) and as log-weight biases (softmax types). The
#: range sits inside float16's normal numbers ([6.1e-5, 65504]), so a weight never overflows
#: to inf (1e39 used to turn every output into NaN) nor underflows to 0 (1e-46 used to
#: silently disable the edge) in any mask dtype, and its log (|log w| <= 9.3) is exact enough
#: in every dtype. A factor 1e4 on a key's attention mass already means "only" or "nothing";
#: to disable an edge use ``fn="none"``.
MIN_CONNECTION_WEIGHT = 1e-4
MAX_CONNECTION_WEIGHT = 1e4

#: ``(layout, topology) -> AttentionPlan``, registered by the compilation layer when it is
#: imported (``canvas_engineering.compilation.compiler`` registers ``compile_topology``). Declarations never
#: import the compiler, so the two 0.1.0 mask methods of :class:`CanvasTopology` reach it here.
PlanCompiler = Callable[["CanvasLayout", "CanvasTopology"], "AttentionPlan"]
_plan_compiler: PlanCompiler | None = None


def set_plan_compiler(compiler: PlanCompiler | None) -> None:
    """Register the compiler of the two 0.1.0 mask methods (``None`` unregisters it).

    :meth:`CanvasTopology.to_attention_mask` and :meth:`CanvasTopology.to_additive_mask`
    compile with it.
    """
    global _plan_compiler
    _plan_compiler = compiler


def _compiled(layout: CanvasLayout, topology: CanvasTopology) -> AttentionPlan:
    if _plan_compiler is None:
        msg = (
            "CanvasTopology mask methods need the compiler: import canvas_engineering (or "
            "canvas_engineering.compilation.compiler), or call canvas_engineering.compile_topology(layout, topology)"
        )
        raise CanvasValidationError(msg)
    return _plan_compiler(layout, topology)


class TemporalFill(str, Enum):
    """What a time-constrained connection reads when its target falls between dst frames."""

    #: read nothing
    DROP = "drop"
    #: read the latest dst frame before the target (zero-order hold); the default
    HOLD = "hold"
    #: read the dst frames around the target, weighted by inverse distance
    INTERPOLATE = "interpolate"


@dataclass(frozen=True)
class Connection:
    """One attention operation: ``src`` positions query ``dst`` keys/values.

    Args:
        src: query region.
        dst: key/value region.
        weight: connection weight, finite and in ``[MIN_CONNECTION_WEIGHT, MAX_CONNECTION_WEIGHT]``
            (``[1e-4, 1e4]``): a log-weight bias for score-based types, an output scale for the
            others. Use ``fn="none"`` to disable an edge.
        t_src: relative frame offset of the queries (``None``: every frame), an integer in
            ``[-MAX_POSITIONS, MAX_POSITIONS]``.
        t_dst: relative frame offset of the keys (``None``: every frame), same range.
        fn: attention function type (``None``: the src region's ``default_attn``, then
            ``"cross_attention"``).
        temporal_fill: what to read when the target falls between dst frames.
        interpolation_order: inverse-distance order for ``INTERPOLATE`` (finite, >= 0).

    Raises:
        ConnectionValidationError: a field breaks its rule (message names the connection).
        UnknownAttentionTypeError: ``fn`` is neither declared nor installed.

    """

    src: str
    dst: str
    weight: float = 1.0
    t_src: int | None = None
    t_dst: int | None = None
    fn: str | None = None
    temporal_fill: TemporalFill = TemporalFill.HOLD
    interpolation_order: float = 1

    def __post_init__(self) -> None:
        for end in ("src", "dst"):
            value = getattr(self, end)
            if not isinstance(value, str) or not value:
                msg = f"connection {self.src!r}->{self.dst!r}: {end} {value!r} must be a non-empty region name"
                raise ConnectionValidationError(msg)
        weight = check_finite_float(
            self.weight,
            f"{self.label}: weight",
            error=ConnectionValidationError,
            minimum=MIN_CONNECTION_WEIGHT,
            maximum=MAX_CONNECTION_WEIGHT,
            rule=(
                "a finite number > 0 (use fn='none' to disable an edge) in "
                f"[MIN_CONNECTION_WEIGHT={MIN_CONNECTION_WEIGHT:g}, MAX_CONNECTION_WEIGHT={MAX_CONNECTION_WEIGHT:g}]: "
                "outside it the weight overflows or underflows in float16 masks"
            ),
            sep=" ",
        )
        object.__setattr__(self, "weight", weight)
        for end in ("t_src", "t_dst"):
            value = getattr(self, end)
            if value is not None:
                value = check_int(
                    value,
                    f"{self.label}: {end}",
                    error=ConnectionValidationError,
                    minimum=-MAX_POSITIONS,
                    maximum=MAX_POSITIONS,
                    rule=f"an integer frame offset or None, within [-MAX_POSITIONS, MAX_POSITIONS] = +-{MAX_POSITIONS}",
                    sep=" ",
                )
                object.__setattr__(self, end, value)
        try:
            object.__setattr__(self, "temporal_fill", TemporalFill(self.temporal_fill))
        except ValueError:
            choices = ", ".join(f.value for f in TemporalFill)
            msg = f"{self.label}: temporal_fill {self.temporal_fill!r} must be one of {choices}"
            raise ConnectionValidationError(msg) from None
        order = check_finite_float(
            self.interpolation_order,
            f"{self.label}: interpolation_order",
            error=ConnectionValidationError,
            minimum=0,
            sep=" ",
        )
        if not isinstance(self.interpolation_order, (int, float)):  # a NumPy scalar: store the Python float
            object.__setattr__(self, "interpolation_order", order)
        if self.fn is not None:
            check_attention_type(self.fn, self.label)

    @property
    def label(self) -> str:
        """``"connection 'src'->'dst'"``, for messages."""
        return f"connection {self.src!r}->{self.dst!r}"

    @property
    def is_temporal(self) -> bool:
        """Whether the connection constrains frames."""
        return self.t_src is not None or self.t_dst is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {
            "src": self.src,
            "dst": self.dst,
            "weight": self.weight,
            "t_src": self.t_src,
            "t_dst": self.t_dst,
            "fn": self.fn,
            "temporal_fill": self.temporal_fill.value,
            "interpolation_order": self.interpolation_order,
        }


class AttentionOp(NamedTuple):
    """One resolved operation: ``(src, dst, weight, fn)``."""

    src: str
    dst: str
    weight: float
    fn: str


@dataclass(frozen=True)
class CanvasTopology:
    """The attention compute graph: a list of :class:`Connection`.

    Args:
        connections: the operations, in order.

    """

    connections: tuple[Connection, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        conns = tuple(self.connections)
        for i, c in enumerate(conns):
            if not isinstance(c, Connection):
                msg = f"topology connection #{i} must be a Connection, got {type(c).__name__}"
                raise ConnectionValidationError(msg)
        object.__setattr__(self, "connections", conns)

    # -- constructors ---------------------------------------------------------------

    @classmethod
    def dense(cls, regions: Sequence[str]) -> CanvasTopology:
        """Every region attends every region (a standard transformer)."""
        return cls([Connection(s, d) for s in regions for d in regions])

    @classmethod
    def isolated(cls, regions: Sequence[str]) -> CanvasTopology:
        """Block-diagonal: each region attends only itself."""
        return cls([Connection(r, r) for r in regions])

    @classmethod
    def hub_spoke(cls, hub: str, spokes: Sequence[str], bidirectional: bool = True) -> CanvasTopology:
        """Star: self-attention everywhere; the hub reads every spoke, each spoke the hub if ``bidirectional``."""
        conns = [Connection(r, r) for r in [hub, *spokes]]
        for spoke in spokes:
            conns.append(Connection(hub, spoke))
            if bidirectional:
                conns.append(Connection(spoke, hub))
        return cls(conns)

    @classmethod
    def causal_chain(cls, regions: Sequence[str]) -> CanvasTopology:
        """Chain ``A -> B -> C``: self-attention, and each region reads the one before it."""
        conns = [Connection(r, r) for r in regions]
        conns += [Connection(regions[i], regions[i - 1]) for i in range(1, len(regions))]
        return cls(conns)

    @classmethod
    def causal_temporal(
        cls, regions: Sequence[str], temporal_fill: TemporalFill = TemporalFill.HOLD
    ) -> CanvasTopology:
        """Same-frame self-attention plus previous-frame attention to every region (itself included).

        No query sees a later frame than its own, so ``temporal_fill`` may be ``HOLD`` or
        ``DROP``; ``INTERPOLATE`` would read the dst frame after the target and is refused.

        Raises:
            ConnectionValidationError: ``temporal_fill`` is ``INTERPOLATE`` (or not a fill mode).

        """
        try:
            temporal_fill = TemporalFill(temporal_fill)
        except ValueError:
            msg = f"causal_temporal: temporal_fill {temporal_fill!r} must be 'hold' or 'drop'"
            raise ConnectionValidationError(msg) from None
        if temporal_fill is TemporalFill.INTERPOLATE:
            msg = (
                "causal_temporal: temporal_fill 'interpolate' would let a query read a slower region's "
                "next frame, which lies in its future; use 'hold' (default) or 'drop'"
            )
            raise ConnectionValidationError(msg)
        conns = [Connection(r, r, t_src=0, t_dst=0, temporal_fill=temporal_fill) for r in regions]
        conns += [
            Connection(s, d, t_src=0, t_dst=-1, temporal_fill=temporal_fill) for s in regions for d in regions
        ]
        return cls(conns)

    # -- queries --------------------------------------------------------------------

    @property
    def regions(self) -> set[str]:
        """Every region named by a connection."""
        return {c.src for c in self.connections} | {c.dst for c in self.connections}

    @property
    def has_temporal_constraints(self) -> bool:
        """Whether any connection constrains frames (``t_src`` or ``t_dst`` set)."""
        return any(c.is_temporal for c in self.connections)

    def neighbors_of(self, region: str) -> list[str]:
        """Regions that ``region`` attends to (as queries): each connection's ``dst``, in connection order.

        A region read by several connections is listed once per connection, as in the published package.
        """
        return [c.dst for c in self.connections if c.src == region]

    def attended_by(self, region: str) -> list[str]:
        """Regions whose queries read ``region`` (as keys/values): each connection's ``src``, in connection order."""
        return [c.src for c in self.connections if c.dst == region]

    def to_block_adjacency(self) -> dict[tuple[str, str], float]:
        """Region-level adjacency ``{(src, dst): weight}``, the largest weight where connections repeat a pair."""
        adjacency: dict[tuple[str, str], float] = {}
        for c in self.connections:
            adjacency[c.src, c.dst] = max(adjacency.get((c.src, c.dst), 0.0), c.weight)
        return adjacency

    def resolve_fn(self, connection: Connection, layout: CanvasLayout | None = None) -> str:
        """Attention type of a connection: ``fn`` -> src region's ``default_attn`` -> ``"cross_attention"``."""
        if connection.fn is not None:
            return connection.fn
        if layout is not None and connection.src in layout.regions:
            default = layout.regions[connection.src].default_attn
            if default is not None:
                return default
        return DEFAULT_ATTENTION

    def attention_ops(self, layout: CanvasLayout | None = None) -> list[AttentionOp]:
        """``[(src, dst, weight, fn), ...]`` with ``fn`` resolved (see :meth:`resolve_fn`)."""
        return [AttentionOp(c.src, c.dst, c.weight, self.resolve_fn(c, layout)) for c in self.connections]

    def validate(self, layout: CanvasLayout) -> None:
        """Check that every connection names regions of ``layout``.

        Raises:
            ConnectionValidationError: naming the connection, its index and the unknown region.

        """
        for i, c in enumerate(self.connections):
            for end in (c.src, c.dst):
                if end not in layout.regions:
                    msg = (
                        f"{c.label} (#{i}) names unknown region {end!r}; "
                        f"layout regions: {', '.join(layout.regions) or '(none)'}"
                    )
                    raise ConnectionValidationError(msg)

    def to_attention_mask(
        self, layout: CanvasLayout, device: str | torch.device = "cpu", max_bytes: int | None = None
    ) -> torch.Tensor:
        """(N, N) float mask: the connection weight where query i may attend key j, else 0.

        The 0.1.0 spelling of :func:`canvas_engineering.compilation.compiler.compile_attention_mask`
        (compiles through the registered compiler, see :func:`set_plan_compiler`). Refused above
        ``max_bytes`` (``None``: the dense mask budget, 2 GiB).
        """
        budget = {} if max_bytes is None else {"max_bytes": max_bytes}
        return _compiled(layout, self).dense_weights(device, **budget)

    def to_additive_mask(
        self, layout: CanvasLayout, device: str | torch.device = "cpu", max_bytes: int | None = None
    ) -> torch.Tensor:
        """(N, N) additive mask: 0 where allowed, -inf where blocked; a query with no key attends itself.

        The 0.1.0 spelling of :func:`canvas_engineering.compilation.compiler.compile_additive_mask`.
        Refused above ``max_bytes`` (``None``: the dense mask budget, 2 GiB).
        """
        budget = {} if max_bytes is None else {"max_bytes": max_bytes}
        return _compiled(layout, self).additive_mask(device, **budget)

    def summary(self) -> str:
        """One line per connection."""
        lines = [f"CanvasTopology: {len(self.connections)} connections"]
        for c in self.connections:
            when = "" if not c.is_temporal else f" t_src={c.t_src} t_dst={c.t_dst} fill={c.temporal_fill.value}"
            lines.append(f"  {c.src} -> {c.dst}  w={c.weight:g} fn={c.fn or '(default)'}{when}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"connections": [c.to_dict() for c in self.connections]}
