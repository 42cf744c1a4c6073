"""Compile a layout + topology into an :class:`AttentionPlan`.

Every connection's effect depends only on (query region, key region, query frame, key
frame). The whole topology, temporal offsets and fill modes included, therefore compiles to
one small table ``weight[C, C]`` over *classes* ``c = region_id * T + frame`` (``C = (R+1) * T``,
the extra region standing for unassigned positions) plus one length-N class vector. Dense
masks are a gather from the table; block views come from per-block class histograms and
never materialise N x N. The only Python loop is over connections.

A model compiles its plan once and hands it to every block: :meth:`AttentionPlan.group_mask`
gives each attention group's :class:`~canvas_engineering.compilation.attention_mask.AttentionMask`, built
once per plan, so device views (``BlockMask``, biases) are built once per model too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from canvas_engineering.compilation.attention_mask import (
    DENSE_MASK_BUDGET,
    AttentionMask,
    ViewCache,
    block_mask_from_tiles,
    check_dense_budget,
    check_kernel,
)
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.topology import CanvasTopology, Connection, TemporalFill, set_plan_compiler
from canvas_engineering.errors import CanvasValidationError, ConnectionValidationError
from canvas_engineering.validation import check_int, is_int

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = [
    "DENSE_MASK_BUDGET",
    "MIN_MASK_WEIGHT",
    "AttentionPlan",
    "BlockView",
    "compile_additive_mask",
    "compile_attention_mask",
    "compile_topology",
    "position_coords",
]


#: Smallest non-zero weight a compiled mask may hold: ``2**-24``, the smallest positive float16.
#: Declared weights are at least ``MIN_CONNECTION_WEIGHT`` (1e-4); only an ``INTERPOLATE``
#: split with a large ``interpolation_order`` can go below, and a smaller share would vanish
#: (silently disabling that frame's edge) in float16 views of the mask, so it is refused
#: with a :class:`~canvas_engineering.errors.ConnectionValidationError` naming the connection.
MIN_MASK_WEIGHT = 2.0**-24

#: what the messages of the canvas-level dense views point to
_PLAN_INSTEAD = (
    "the block plan instead (plan.block_view(block_size), plan.block_mask(block_size, device), or "
    "plan.group_mask(connections).tiles(block_size) / .partitions()), which never builds N x N"
)


@dataclass(frozen=True)
class BlockView:
    """Which (query block, key block) tiles of the N x N mask hold any allowed pair.

    Attributes:
        block_size: tile side; the last block may be shorter.
        nonempty: (n_blocks, n_blocks) bool, the tile holds at least one allowed pair.
        full: (n_blocks, n_blocks) bool, every pair of the (whole) tile is allowed.

    """

    block_size: int
    nonempty: torch.Tensor
    full: torch.Tensor

    @property
    def num_blocks(self) -> int:
        """Blocks per side."""
        return self.nonempty.shape[0]

    @property
    def density(self) -> float:
        """Share of tiles that are non-empty."""
        return float(self.nonempty.float().mean())


def position_coords(layout: CanvasLayout) -> torch.Tensor:
    """(N, 5) long per position: t, h, w, real time, slot (index within its region's frame)."""
    n = layout.num_positions
    pos = torch.arange(n)
    t, hw = pos // (layout.H * layout.W), pos % (layout.H * layout.W)
    h, w = hw // layout.W, hw % layout.W
    rid = layout.position_region_ids
    real = layout.frame_real_times[rid, t]
    real = torch.where(real >= 0, real, t)
    bounds = torch.tensor([s.bounds for s in layout.regions.values()] + [(0, layout.T, 0, layout.H, 0, layout.W)])
    h0, w0, w1 = bounds[rid, 2], bounds[rid, 4], bounds[rid, 5]
    slot = (h - h0) * (w1 - w0) + (w - w0)
    return torch.stack([t, h, w, real, slot], dim=1)


@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """A compiled topology: class tables and per-position class ids.

    Attributes:
        layout: the layout it was compiled for.
        topology: the topology it was compiled from.
        class_ids: (N,) long, ``region_id * T + frame`` of each position.
        weight_table: (C, C) float, the largest connection weight allowing (query class,
            key class), 0 where blocked.
        cache: a :class:`~canvas_engineering.compilation.attention_mask.ViewCache` of what the plan builds
            on demand (block views, ``BlockMask`` per device, group masks); ``cache.clear()``
            drops it.

    """

    layout: CanvasLayout
    topology: CanvasTopology
    class_ids: torch.Tensor
    weight_table: torch.Tensor
    cache: ViewCache = field(default_factory=ViewCache, repr=False, compare=False)

    @property
    def num_positions(self) -> int:
        """N."""
        return self.class_ids.numel()

    @property
    def num_classes(self) -> int:
        """C = (R + 1) * T."""
        return self.weight_table.shape[0]

    @cached_property
    def allowed_table(self) -> torch.Tensor:
        """(C, C) bool: query class may attend key class."""
        return self.weight_table > 0

    @cached_property
    def class_counts(self) -> torch.Tensor:
        """(C,) number of positions per class."""
        return torch.bincount(self.class_ids, minlength=self.num_classes)

    @cached_property
    def coords(self) -> torch.Tensor:
        """(N, 5) per-position coordinates (see :func:`position_coords`)."""
        return position_coords(self.layout)

    @property
    def num_allowed_pairs(self) -> int:
        """Number of allowed (query, key) pairs, counted from the tables."""
        counts = self.class_counts.double()
        return int(counts @ self.allowed_table.double() @ counts)

    # -- dense views (tests and compatibility) ---------------------------------------

    def _gather(self, table: torch.Tensor, device: str | torch.device, where: str, max_bytes: int) -> torch.Tensor:
        n = self.num_positions
        check_dense_budget(n, n, table.element_size(), f"AttentionPlan.{where}", max_bytes, _PLAN_INSTEAD)
        cls = self.class_ids.to(device)
        rows = table.to(device).index_select(0, cls)  # (N, C)
        return rows.index_select(1, cls)  # (N, N)

    # Every dense view is refused above ``max_bytes`` (default DENSE_MASK_BUDGET, 2 GiB): at
    # ~23,000 positions a float32 N x N mask already takes 2 GiB.

    def dense_weights(self, device: str | torch.device = "cpu", max_bytes: int = DENSE_MASK_BUDGET) -> torch.Tensor:
        """(N, N) float: weight where query i may attend key j, 0 where blocked.

        Raises:
            CanvasValidationError: the mask would exceed ``max_bytes`` (default 2 GiB); the
                message points to the block plan.

        """
        return self._gather(self.weight_table, device, "dense_weights", max_bytes)

    def dense_allowed(self, device: str | torch.device = "cpu", max_bytes: int = DENSE_MASK_BUDGET) -> torch.Tensor:
        """(N, N) bool: query i may attend key j (refused above ``max_bytes``, see :meth:`dense_weights`)."""
        return self._gather(self.allowed_table, device, "dense_allowed", max_bytes)

    def additive_mask(self, device: str | torch.device = "cpu", max_bytes: int = DENSE_MASK_BUDGET) -> torch.Tensor:
        """(N, N) float: 0 where allowed, -inf where blocked; a query with no allowed key attends itself.

        Refused above ``max_bytes`` (see :meth:`dense_weights`).
        """
        table = torch.zeros(self.weight_table.shape).masked_fill(~self.allowed_table, float("-inf"))
        out = self._gather(table, device, "additive_mask", max_bytes)
        lonely = (~self.allowed_table.any(1))[self.class_ids].nonzero().squeeze(1).to(device)
        out[lonely, lonely] = 0.0
        return out

    def log_weight_bias(self, device: str | torch.device = "cpu", max_bytes: int = DENSE_MASK_BUDGET) -> torch.Tensor:
        """(N, N) float additive bias ``log(weight)``, -inf where blocked (refused above ``max_bytes``)."""
        return self._gather(self.weight_table.log(), device, "log_weight_bias", max_bytes)

    # -- block views ---------------------------------------------------------------

    def block_view(self, block_size: int = 128) -> BlockView:
        """Non-empty and full tiles at ``block_size``, from per-block class histograms (cached)."""
        check_int(block_size, "AttentionPlan.block_view: block_size", minimum=1, rule="a positive integer")
        return self.cache.get(("block_view", block_size), lambda: self._build_block_view(block_size))

    def _build_block_view(self, block_size: int) -> BlockView:
        n, c = self.num_positions, self.num_classes
        n_blocks = -(-n // block_size)
        presence = torch.zeros(n_blocks, c)
        presence[torch.arange(n) // block_size, self.class_ids] = 1.0  # (n_blocks, C)
        allowed = self.allowed_table.float()
        nonempty = (presence @ allowed @ presence.T) > 0
        blocked = (presence @ (1.0 - allowed) @ presence.T) > 0
        full = nonempty & ~blocked
        if n % block_size:  # a short last block is never "full" of a whole tile
            full[-1, :] = False
            full[:, -1] = False
        return BlockView(block_size, nonempty, full)

    def block_mask(self, block_size: int = 128, device: str | torch.device = "cpu") -> BlockMask:
        """Return a FlexAttention ``BlockMask`` of the whole canvas, from the block view (no N x N tensor).

        Its ``mask_mod`` gathers from the class table, so partial tiles are exact. Cached per
        (block size, device) in :attr:`cache`.
        """
        view = self.block_view(block_size)
        device = torch.device(device)

        def build() -> BlockMask:
            n = self.num_positions
            padded = view.num_blocks * block_size
            # Pad with an extra all-blocked class so out-of-range indices read False.
            cls = torch.full((padded,), self.num_classes, dtype=torch.long)
            cls[:n] = self.class_ids
            table = torch.zeros(self.num_classes + 1, self.num_classes + 1, dtype=torch.bool)
            table[:-1, :-1] = self.allowed_table
            cls_d, table_d = cls.to(device), table.to(device)

            def mask_mod(b, h, q_idx, kv_idx):
                return table_d[cls_d[q_idx], cls_d[kv_idx]]

            partial = view.nonempty & ~view.full
            return block_mask_from_tiles(partial, view.full, block_size, mask_mod, (n, n), device)

        return self.cache.get(("block_mask", block_size, str(device)), build)

    # -- groups (what execution runs) --------------------------------------------------

    def ordered_positions(self, regions: Iterable[str]) -> torch.Tensor:
        """Positions of ``regions`` ordered by (frame, region, position): time becomes block structure."""
        layout = self.layout
        names = sorted(set(regions), key=layout.region_names.index)
        pos = torch.cat([layout.region_indices(r) for r in names])
        rid = layout.position_region_ids[pos]
        frame = layout.position_frames[pos]
        key = (frame * (len(layout.regions) + 1) + rid) * layout.num_positions + pos
        return pos[torch.argsort(key)]

    def group_mask(self, connections: Sequence[int], kernel: str = "auto") -> AttentionMask:
        """Return the :class:`AttentionMask` of the connections at these indices, run as one group.

        Queries are the union of their src regions' positions, keys the union of their dst
        regions', both in :meth:`ordered_positions` order; the class table holds only these
        connections. Built once per plan and set of connections; each ``kernel`` gets a mask
        sharing the same cache (so a model's blocks build each device view once).

        Raises:
            CanvasValidationError: an index that is not a connection of the topology, or an
                unknown kernel.

        """
        check_kernel(kernel, "AttentionPlan.group_mask")
        count = len(self.topology.connections)
        given = list(connections)
        # checked before sorting: a non-integer index would make sorted() raise a bare TypeError
        bad = [i for i in given if not is_int(i) or not 0 <= i < count]
        if bad or not given:
            msg = f"AttentionPlan.group_mask: connections {given!r} must be indices in [0, {count}) (at least one)"
            raise CanvasValidationError(msg)
        indices = tuple(sorted(set(given)))

        def build_base() -> AttentionMask:
            conns = [self.topology.connections[i] for i in indices]
            table = _weight_table(self.layout, conns)
            q_pos = self.ordered_positions(c.src for c in conns)
            k_pos = self.ordered_positions(c.dst for c in conns)
            mask = AttentionMask(table, q_pos, k_pos, self.class_ids, self.coords)
            # Queries grouped by what they read: each partition is then a contiguous run (sliced,
            # not gathered), and wide readers sit in blocks of their own for block kernels too.
            # Keys that are also queries follow the query order: what a partition reads (mostly
            # its own and nearby frames) stays in few runs, and over the same positions the
            # tokens are gathered once.
            q_order = mask.partitions().order
            rank = torch.full((self.num_positions,), -1, dtype=torch.long)
            rank[q_pos[q_order]] = torch.arange(len(q_pos))
            k_rank = rank[k_pos]
            if bool((k_rank >= 0).all()):
                return mask.reordered(q_order, torch.argsort(k_rank))
            return mask.reordered(q_order)

        base = self.cache.get(("group_mask", indices, "auto"), build_base)
        if kernel == "auto":
            return base
        return self.cache.get(("group_mask", indices, kernel), lambda: base.with_kernel(kernel))


def compile_topology(layout: CanvasLayout, topology: CanvasTopology) -> AttentionPlan:
    """Compile ``topology`` on ``layout`` into an :class:`AttentionPlan`.

    Every non-zero weight of the plan lies in ``[MIN_MASK_WEIGHT, MAX_CONNECTION_WEIGHT]``
    (``[2**-24, 1e4]``), so it is finite and non-zero in float32, bfloat16 and float16 views.

    Raises:
        ConnectionValidationError: a connection names a region the layout lacks, or an
            ``INTERPOLATE`` connection's split gives a frame a weight below ``MIN_MASK_WEIGHT``.

    """
    topology.validate(layout)
    class_ids = layout.position_region_ids * layout.T + layout.position_frames
    return AttentionPlan(layout, topology, class_ids, _weight_table(layout, topology.connections))


def compile_attention_mask(
    layout: CanvasLayout,
    topology: CanvasTopology,
    device: str | torch.device = "cpu",
    max_bytes: int = DENSE_MASK_BUDGET,
) -> torch.Tensor:
    """(N, N) float mask: the connection weight where query i may attend key j, else 0.

    Raises:
        ConnectionValidationError: a connection names a region the layout lacks.
        CanvasValidationError: the mask would exceed ``max_bytes`` (default 2 GiB).

    """
    return compile_topology(layout, topology).dense_weights(device, max_bytes)


def compile_additive_mask(
    layout: CanvasLayout,
    topology: CanvasTopology,
    device: str | torch.device = "cpu",
    max_bytes: int = DENSE_MASK_BUDGET,
) -> torch.Tensor:
    """(N, N) additive mask: 0 where allowed, -inf where blocked; a query with no key attends itself.

    Raises:
        ConnectionValidationError: a connection names a region the layout lacks.
        CanvasValidationError: the mask would exceed ``max_bytes`` (default 2 GiB).

    """
    return compile_topology(layout, topology).additive_mask(device, max_bytes)


# The declaration layer never imports this module; CanvasTopology's 0.1.0 mask methods reach
# the compiler through this registration instead.
set_plan_compiler(compile_topology)


def _weight_table(layout: CanvasLayout, connections: Sequence[Connection]) -> torch.Tensor:
    """(C, C) weight table of ``connections``: the largest weight allowing each (query class, key class)."""
    n_regions, n_frames = len(layout.regions) + 1, layout.T
    index = {name: i for i, name in enumerate(layout.regions)}
    table = torch.zeros(n_regions, n_regions, n_frames, n_frames)  # (Rq, Rk, Tq, Tk)
    for conn in connections:
        i, j = index[conn.src], index[conn.dst]
        table[i, j] = torch.maximum(table[i, j], _connection_frames(layout, conn).float())
    # class = region * T + frame, on both axes
    return table.permute(0, 2, 1, 3).reshape(n_regions * n_frames, n_regions * n_frames).contiguous()


def _connection_frames(layout: CanvasLayout, conn: Connection) -> torch.Tensor:
    """(T, T) float64 weight of one connection over (query canvas frame, key canvas frame).

    Built in log space, so a share too small for any mask dtype is seen (and refused) instead
    of rounding to 0 and silently dropping the edge.

    Raises:
        ConnectionValidationError: a frame the connection reads gets a weight below ``MIN_MASK_WEIGHT``.

    """
    T = layout.T
    real = layout.frame_real_times
    names = layout.region_names
    tau_q = real[names.index(conn.src)]  # (T,) real time of each src frame, -1 if none
    src_ok = tau_q >= 0
    dst_ok = real[names.index(conn.dst)] >= 0
    dst = layout.regions[conn.dst]
    # Reference frames and read targets live on the real time axis, which a slow src or dst
    # stretches past T (real frames t0 + k * period >= T): the connection spans that axis.
    # Regions ending within T keep [0, T), so a slow region elsewhere changes no other mask.
    horizon = max(T, int(tau_q.max()) + 1, int(real[names.index(conn.dst)].max()) + 1)
    never = torch.tensor(float("-inf"), dtype=torch.float64)
    if conn.t_src is None and conn.t_dst is None:
        log_frames = torch.where(src_ok[:, None] & dst_ok[None, :], 0.0, never)
    elif conn.t_dst is None:
        ref = tau_q - conn.t_src
        q_ok = src_ok & (ref >= 0) & (ref < horizon)
        log_frames = torch.where(q_ok[:, None] & dst_ok[None, :], 0.0, never)
    elif conn.t_src is None:
        rho = _candidate_reads(dst, max(0, conn.t_dst), min(horizon, horizon + conn.t_dst))
        reads = _read_dst(dst, rho, T, conn).amax(0) if len(rho) else never.expand(T)  # (T,)
        log_frames = torch.where(src_ok[:, None], reads[None, :], never)
    else:
        ref = tau_q - conn.t_src
        rho = ref + conn.t_dst
        q_ok = src_ok & (ref >= 0) & (ref < horizon) & (rho >= 0) & (rho < horizon)
        log_frames = torch.where(q_ok[:, None], _read_dst(dst, rho, T, conn), never)
    log_weight = log_frames + math.log(conn.weight)
    tiny = (log_weight > float("-inf")) & (log_weight < math.log(MIN_MASK_WEIGHT))
    if bool(tiny.any()):
        q_t, k_t = (int(v) for v in tiny.nonzero()[0])
        msg = (
            f"{conn.label}: interpolation_order={conn.interpolation_order:g} gives canvas frame {k_t} (read by "
            f"query frame {q_t}) the weight 10**{float(log_weight[q_t, k_t]) / math.log(10):.1f}, below "
            "MIN_MASK_WEIGHT=2**-24 (the smallest float16): the edge would silently vanish in float16 masks; "
            "lower interpolation_order or raise the weight"
        )
        raise ConnectionValidationError(msg)
    return log_weight.exp()


def _candidate_reads(dst, lo: int, hi: int) -> torch.Tensor:
    """Real times in ``[lo, hi)`` at which reading ``dst`` gives each frame its largest share.

    A frame's share peaks at its own real time ``r_k`` (exact read), else at the read closest to
    it: ``r_k + 1`` after it, ``r_k + period - 1`` before the next frame, or an end of the range.
    So the per-frame maximum over every ``rho`` in the range is reached on these few candidates
    (``O(frames)``, not one per real frame of a long slow region).
    """
    t0, n, p = dst.bounds[0], dst.num_frames, dst.period
    real = t0 + torch.arange(n) * p
    rho = torch.cat([real, real + 1, real + p - 1, torch.tensor([lo, hi - 1])]).unique()
    return rho[(rho >= lo) & (rho < hi)]


def _read_dst(dst, rho: torch.Tensor, T: int, conn: Connection) -> torch.Tensor:
    """(K, T) float64 log share of the connection weight each dst canvas frame gets when reading real time ``rho``.

    ``-inf`` where the frame is not read.
    """
    t0, n, p = dst.bounds[0], dst.num_frames, dst.period
    rel = rho - t0
    in_span = (rel >= 0) & (rel < n * p)  # each frame holds for `period` real frames
    prev = (rel.clamp(min=0) // p).clamp(max=n - 1)  # latest dst frame at or before rho
    exact = in_span & (rel.clamp(min=0) % p == 0)
    rows = torch.arange(len(rho))
    out = torch.full((len(rho), n), float("-inf"), dtype=torch.float64)
    if conn.temporal_fill is TemporalFill.DROP:
        out[rows[exact], prev[exact]] = 0.0
    elif conn.temporal_fill is TemporalFill.HOLD:
        out[rows[in_span], prev[in_span]] = 0.0
    else:  # INTERPOLATE: inverse-distance split between the frames around rho
        out[rows[exact], prev[exact]] = 0.0
        between = in_span & ~exact
        nxt = prev + 1
        has_next = between & (nxt < n)
        d_prev = (rel - prev * p).double().clamp(min=1)
        d_next = (nxt * p - rel).double().clamp(min=1)
        # share_prev = a / (a + b) with a = d_prev**-order, b = d_next**-order, i.e.
        # 1 / (1 + (d_prev / d_next)**order), whose log is -softplus(order * log(d_prev / d_next)).
        # In log space a large order neither gives 0 / 0 (NaN in the mask, as the powers did when
        # both underflowed) nor rounds a tiny share to 0 (the caller refuses those by name).
        x = conn.interpolation_order * (d_prev / d_next).log()
        log_prev = torch.where(has_next, -F.softplus(x), torch.zeros_like(x))
        log_next = -F.softplus(-x)
        out[rows[between], prev[between]] = log_prev[between]
        out[rows[has_next], nxt[has_next]] = log_next[has_next]
    full = torch.full((len(rho), T), float("-inf"), dtype=torch.float64)
    full[:, t0 : t0 + n] = out
    return full
