"""Compile a layout + topology into an :class:`AttentionPlan`.

Every connection's effect depends only on (query region, key region, query frame, key
frame). The whole topology, temporal offsets and fill modes included, therefore compiles to
one small table ``weight[C, C]`` over *classes* ``c = region_id * T + frame`` (``C = (R+1) * T``,
the extra region standing for unassigned positions) plus one length-N class vector. Dense
masks are a gather from the table; block views come from per-block class histograms and
never materialise N x N. The only Python loop is over connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from canvas_engineering.layout import CanvasLayout
from canvas_engineering.topology import CanvasTopology, Connection, TemporalFill

__all__ = ["AttentionPlan", "BlockView", "compile_topology"]


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


@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """A compiled topology: class tables and per-position class ids.

    Attributes:
        layout: the layout it was compiled for.
        topology: the topology it was compiled from.
        class_ids: (N,) long, ``region_id * T + frame`` of each position.
        weight_table: (C, C) float, the largest connection weight allowing (query class,
            key class), 0 where blocked.
    """

    layout: CanvasLayout
    topology: CanvasTopology
    class_ids: torch.Tensor
    weight_table: torch.Tensor
    _block_views: dict[int, BlockView] = field(default_factory=dict, repr=False)

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
        if not isinstance(block_size, int) or block_size < 1:
            msg = f"block_size={block_size!r} must be a positive integer"
            raise ValueError(msg)
        if block_size not in self._block_views:
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
            self._block_views[block_size] = BlockView(block_size, nonempty, full)
        return self._block_views[block_size]

    def block_mask(self, block_size: int = 128, device: str | torch.device = "cpu"):  # noqa: ANN201
        """A FlexAttention ``BlockMask`` built from the block view (no N x N tensor).

        Its ``mask_mod`` gathers from the class table, so partial tiles are exact.
        """
        from torch.nn.attention.flex_attention import BlockMask

        view = self.block_view(block_size)
        n = self.num_positions
        padded = view.num_blocks * block_size
        # Pad with an extra all-blocked class so out-of-range indices read False.
        cls = torch.full((padded,), self.num_classes, dtype=torch.long)
        cls[:n] = self.class_ids
        table = torch.zeros(self.num_classes + 1, self.num_classes + 1, dtype=torch.bool)
        table[:-1, :-1] = self.allowed_table
        cls, table = cls.to(device), table.to(device)

        def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
            return table[cls[q_idx], cls[kv_idx]]

        partial = view.nonempty & ~view.full

        def as_blocks(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            num = tiles.sum(-1).to(torch.int32)
            idx = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True).to(torch.int32)
            return num[None, None].to(device), idx[None, None].to(device)

        kv_num, kv_idx = as_blocks(partial)
        full_num, full_idx = as_blocks(view.full)
        return BlockMask.from_kv_blocks(
            kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(n, n)
        )


def compile_topology(layout: CanvasLayout, topology: CanvasTopology) -> AttentionPlan:
    """Compile ``topology`` on ``layout`` into an :class:`AttentionPlan`.

    Raises:
        ConnectionValidationError: a connection names a region the layout lacks.
    """
    topology.validate(layout)
    n_regions, n_frames = len(layout.regions) + 1, layout.T
    index = {name: i for i, name in enumerate(layout.regions)}
    table = torch.zeros(n_regions, n_regions, n_frames, n_frames)  # (Rq, Rk, Tq, Tk)
    for conn in topology.connections:
        i, j = index[conn.src], index[conn.dst]
        table[i, j] = torch.maximum(table[i, j], _connection_frames(layout, conn))
    # class = region * T + frame, on both axes
    weight_table = table.permute(0, 2, 1, 3).reshape(n_regions * n_frames, n_regions * n_frames)
    class_ids = layout.position_region_ids * n_frames + layout.position_frames
    return AttentionPlan(layout, topology, class_ids, weight_table.contiguous())


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


def _read_dst(dst, rho: torch.Tensor, T: int, conn: Connection) -> torch.Tensor:  # noqa: ANN001
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
