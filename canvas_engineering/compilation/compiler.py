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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from canvas_engineering.compilation.attention_mask import AttentionMask, ViewCache, block_mask_from_tiles, check_kernel
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.topology import CanvasTopology, Connection, TemporalFill, set_plan_compiler
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.validation import check_int, is_int

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = [
    "AttentionPlan",
    "BlockView",
    "compile_additive_mask",
    "compile_attention_mask",
    "compile_topology",
    "position_coords",
]


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

    def _gather(self, table: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        cls = self.class_ids.to(device)
        rows = table.to(device).index_select(0, cls)  # (N, C)
        return rows.index_select(1, cls)  # (N, N)

    def dense_weights(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """(N, N) float: weight where query i may attend key j, 0 where blocked."""
        return self._gather(self.weight_table, device)

    def dense_allowed(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """(N, N) bool: query i may attend key j."""
        return self._gather(self.allowed_table, device)

    def additive_mask(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """(N, N) float: 0 where allowed, -inf where blocked; a query with no allowed key attends itself."""
        table = torch.zeros(self.weight_table.shape).masked_fill(~self.allowed_table, float("-inf"))
        out = self._gather(table, device)
        lonely = (~self.allowed_table.any(1))[self.class_ids].nonzero().squeeze(1).to(device)
        out[lonely, lonely] = 0.0
        return out

    def log_weight_bias(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """(N, N) float additive bias ``log(weight)``, -inf where blocked (weights as log-weight biases)."""
        return self._gather(self.weight_table.log(), device)

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

    Raises:
        ConnectionValidationError: a connection names a region the layout lacks.

    """
    topology.validate(layout)
    class_ids = layout.position_region_ids * layout.T + layout.position_frames
    return AttentionPlan(layout, topology, class_ids, _weight_table(layout, topology.connections))


def compile_attention_mask(
    layout: CanvasLayout, topology: CanvasTopology, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(N, N) float mask: the connection weight where query i may attend key j, else 0.

    Raises:
        ConnectionValidationError: a connection names a region the layout lacks.

    """
    return compile_topology(layout, topology).dense_weights(device)


def compile_additive_mask(
    layout: CanvasLayout, topology: CanvasTopology, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(N, N) additive mask: 0 where allowed, -inf where blocked; a query with no key attends itself.

    Raises:
        ConnectionValidationError: a connection names a region the layout lacks.

    """
    return compile_topology(layout, topology).additive_mask(device)


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
        table[i, j] = torch.maximum(table[i, j], _connection_frames(layout, conn))
    # class = region * T + frame, on both axes
    return table.permute(0, 2, 1, 3).reshape(n_regions * n_frames, n_regions * n_frames).contiguous()


def _connection_frames(layout: CanvasLayout, conn: Connection) -> torch.Tensor:
    """(T, T) weight of one connection over (query canvas frame, key canvas frame)."""
    T = layout.T
    real = layout.frame_real_times
    names = layout.region_names
    tau_q = real[names.index(conn.src)]  # (T,) real time of each src frame, -1 if none
    src_ok = tau_q >= 0
    dst_ok = real[names.index(conn.dst)] >= 0
    dst = layout.regions[conn.dst]
    if conn.t_src is None and conn.t_dst is None:
        frames = (src_ok[:, None] & dst_ok[None, :]).float()
    elif conn.t_dst is None:
        ref = tau_q - conn.t_src
        q_ok = src_ok & (ref >= 0) & (ref < T)
        frames = (q_ok[:, None] & dst_ok[None, :]).float()
    elif conn.t_src is None:
        rho = torch.arange(T) + conn.t_dst
        rho = rho[(rho >= 0) & (rho < T)]
        reads = _read_dst(dst, rho, T, conn)  # (K, T)
        frames = src_ok.float()[:, None] * (reads.amax(0) if len(rho) else torch.zeros(T))[None, :]
    else:
        ref = tau_q - conn.t_src
        rho = ref + conn.t_dst
        q_ok = src_ok & (ref >= 0) & (ref < T) & (rho >= 0) & (rho < T)
        frames = _read_dst(dst, rho, T, conn) * q_ok.float()[:, None]
    return frames * conn.weight


def _read_dst(dst, rho: torch.Tensor, T: int, conn: Connection) -> torch.Tensor:
    """(K, T) share of the connection weight each dst canvas frame gets when reading real time ``rho``."""
    t0, n, p = dst.bounds[0], dst.num_frames, dst.period
    rel = rho - t0
    in_span = (rel >= 0) & (rel < n * p)  # each frame holds for `period` real frames
    prev = (rel.clamp(min=0) // p).clamp(max=n - 1)  # latest dst frame at or before rho
    exact = in_span & (rel.clamp(min=0) % p == 0)
    rows = torch.arange(len(rho))
    out = torch.zeros(len(rho), n)
    if conn.temporal_fill is TemporalFill.DROP:
        out[rows[exact], prev[exact]] = 1.0
    elif conn.temporal_fill is TemporalFill.HOLD:
        out[rows[in_span], prev[in_span]] = 1.0
    else:  # INTERPOLATE: inverse-distance split between the frames around rho
        out[rows[exact], prev[exact]] = 1.0
        between = in_span & ~exact
        nxt = prev + 1
        has_next = between & (nxt < n)
        d_prev = (rel - prev * p).double()
        d_next = (nxt * p - rel).double()
        a = d_prev.clamp(min=1).pow(-conn.interpolation_order)
        b = torch.where(has_next, d_next.clamp(min=1).pow(-conn.interpolation_order), torch.zeros_like(a))
        share_prev = (a / (a + b)).float()
        out[rows[between], prev[between]] = share_prev[between]
        out[rows[has_next], nxt[has_next]] = 1.0 - share_prev[has_next]
    full = torch.zeros(len(rho), T)
    full[:, t0 : t0 + n] = out
    return full
