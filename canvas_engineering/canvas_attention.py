"""``CanvasAttention``: run a compiled topology, one fused call per attention type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from canvas_engineering.attention_mask import AttentionMask
from canvas_engineering.compiler import AttentionPlan, compile_topology
from canvas_engineering.errors import CanvasValidationError, UnknownAttentionTypeError
from canvas_engineering.kernels import KERNELS
from canvas_engineering.layout import CanvasLayout
from canvas_engineering.program import WRITE_MODES
from canvas_engineering.topology import CanvasTopology, Connection

__all__ = ["AttentionGroup", "CanvasAttention", "position_coords"]


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


class AttentionGroup(nn.Module):
    """The connections of one resolved attention type and write mode, run as one call.

    Attributes:
        fn: the attention type name.
        connections: the connections it runs.
        mask: the group's :class:`AttentionMask`.
        op: the attention type module.
        write_mode: ``"add"``, ``"gate"`` or ``"replace"`` (see :class:`CanvasAttention`).
        gate_logit: (1,) learned gate logit of a ``"gate"`` group, zero-initialised (gate 0.5).
    """

    def __init__(
        self, fn: str, connections: list[Connection], mask: AttentionMask, op: nn.Module, write_mode: str = "add"
    ) -> None:
        super().__init__()
        self.fn = fn
        self.connections = connections
        self.mask = mask
        self.op = op
        self.write_mode = write_mode
        if write_mode == "gate":
            # shape (1,), not (): FSDP2 shards parameters along dim 0
            self.gate_logit = nn.Parameter(torch.zeros(1))
        self.register_buffer("q_positions", mask.q_positions, persistent=False)
        self.register_buffer("k_positions", mask.k_positions, persistent=False)
        # Contiguous position ranges are sliced (a view) instead of gathered (a copy, and a
        # scatter-add in backward).
        self.q_range = _as_range(mask.q_positions)
        self.k_range = _as_range(mask.k_positions)

    def _take(self, x: torch.Tensor, positions: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
        return x[:, span[0] : span[1]] if span is not None else x[:, positions]

    def forward(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """(B, nq, d) updates for the group's queries (a ``"gate"`` group's already gated)."""
        xq = self._take(x, self.q_positions, self.q_range)
        xk = xq if self.k_range == self.q_range and self.k_range is not None else self._take(x, self.k_positions, self.k_range)
        out = self.op(xq, xk, self.mask, beta)
        if self.write_mode == "gate":
            out = out * torch.sigmoid(self.gate_logit).to(out.dtype)
        return out


def _as_range(positions: torch.Tensor) -> tuple[int, int] | None:
    """``(start, stop)`` if ``positions`` is ``arange(start, stop)``, else None."""
    if positions.numel() == 0:
        return None
    start = int(positions[0])
    if torch.equal(positions, torch.arange(start, start + positions.numel())):
        return (start, start + positions.numel())
    return None


class CanvasAttention(nn.Module):
    """Attention over canvas tokens that runs a topology as a compute graph.

    Connections are grouped by (resolved attention type, write mode) (type: connection ``fn``
    -> src region ``default_attn`` -> ``"cross_attention"``); each group runs once per forward
    over the union of its query and key positions with the group's mask. Group outputs are
    combined by write mode:

    * ``"add"`` (the default): summed.
    * ``"gate"``: multiplied by ``sigmoid(gate_logit)``, one learned scalar per group starting
      at 0 (gate 0.5), then summed with the others.
    * ``"replace"``: at every query position of a replace group, the (summed) output of the
      replace groups writing there *replaces* the sum of the add and gate groups.

    A position that is no group's query gets 0. Two groups of one type but different write
    modes are separate modules (separate weights).

    Args:
        layout: the canvas layout.
        topology: the attention graph.
        d_model: token width (defaults to ``layout.d_model``).
        n_heads: attention heads.
        kernel: ``"auto"`` (flex on GPU, tile-packed SDPA on CPU), ``"flex"``, ``"tiled"`` or ``"dense"``.
        type_config: per-type options, ``{"local_attention": {"window": 2}}``.
        write_modes: one write mode per connection of ``topology`` (``None``: all ``"add"``).

    Raises:
        UnknownAttentionTypeError: a connection resolves to a type that is not installed
            (the message names the connection and lists the installed types).
        CanvasValidationError: ``write_modes`` has the wrong length or an unknown mode (named).

    Shapes: ``forward(x (B, N, d_model), beta) -> (B, N, d_model)``.
    """

    def __init__(
        self,
        layout: CanvasLayout,
        topology: CanvasTopology,
        d_model: int | None = None,
        n_heads: int = 4,
        kernel: str = "auto",
        type_config: Mapping[str, Mapping[str, Any]] | None = None,
        write_modes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        from canvas_engineering.plugin_host import get_registry

        modes = _check_write_modes(topology, write_modes)
        if kernel not in KERNELS:
            msg = f"CanvasAttention kernel {kernel!r} must be one of {', '.join(KERNELS)}"
            raise ValueError(msg)
        self.layout = layout
        self.topology = topology
        self.d_model = d_model or layout.d_model
        self.n_heads = n_heads
        self.plan: AttentionPlan = compile_topology(layout, topology)
        registry = get_registry().attention_types
        type_config = dict(type_config or {})
        by_type: dict[tuple[str, str], list[Connection]] = {}
        for conn, mode in zip(topology.connections, modes):
            fn = topology.resolve_fn(conn, layout)
            if fn not in registry:
                msg = (
                    f"{conn.label}: attention type {fn!r} is not installed; "
                    f"installed types: {', '.join(sorted(registry.names()))}"
                )
                raise UnknownAttentionTypeError(msg)
            by_type.setdefault((fn, mode), []).append(conn)
        coords = position_coords(layout)
        self.groups = nn.ModuleList()
        replaced = torch.zeros(layout.num_positions, dtype=torch.bool)
        for (fn, mode), conns in by_type.items():
            sub = compile_topology(layout, CanvasTopology(conns))
            q_pos = self._ordered_positions({c.src for c in conns})
            k_pos = self._ordered_positions({c.dst for c in conns})
            mask = AttentionMask(sub.weight_table, q_pos, k_pos, sub.class_ids, coords, kernel)
            op = registry[fn].obj(d_model=self.d_model, n_heads=n_heads, **dict(type_config.get(fn, {})))
            self.groups.append(AttentionGroup(fn, conns, mask, op, mode))
            if mode == "replace":
                replaced[q_pos] = True
        #: (N,) bool: positions some replace group writes (None when there is no such group)
        self.replace_mask: torch.Tensor | None
        self.register_buffer("replace_mask", replaced if bool(replaced.any()) else None, persistent=False)

    def _ordered_positions(self, regions: set[str]) -> torch.Tensor:
        """Positions of ``regions`` ordered by (frame, region, position): time becomes block structure."""
        layout = self.layout
        pos = torch.cat([layout.region_indices(r) for r in sorted(regions, key=layout.region_names.index)])
        rid = layout.position_region_ids[pos]
        frame = layout.position_frames[pos]
        key = (frame * (len(layout.regions) + 1) + rid) * layout.num_positions + pos
        return pos[torch.argsort(key)]

    def set_kernel(self, kernel: str) -> None:
        """Override the kernel of every group (``"auto"``, ``"flex"``, ``"tiled"``, ``"dense"``)."""
        if kernel not in KERNELS:
            msg = f"kernel {kernel!r} must be one of {', '.join(KERNELS)}"
            raise ValueError(msg)
        for group in self.groups:
            group.mask.kernel = kernel

    def forward(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """Map canvas tokens (B, N, d_model) to attention updates (B, N, d_model)."""
        n = self.layout.num_positions
        if x.dim() != 3 or x.shape[1] != n or x.shape[2] != self.d_model:
            msg = f"CanvasAttention expects tokens of shape (B, {n}, {self.d_model}), got {tuple(x.shape)}"
            raise ValueError(msg)
        if len(self.groups) == 1 and self.groups[0].q_range == (0, n):
            return self.groups[0](x, beta).to(x.dtype)  # one group over every position, in order
        out = torch.zeros_like(x)
        replaced = None
        for group in self.groups:
            y = group(x, beta).to(x.dtype)
            if group.write_mode == "replace":
                replaced = (torch.zeros_like(x) if replaced is None else replaced).index_add(1, group.q_positions, y)
            else:
                out = out.index_add(1, group.q_positions, y)
        if replaced is not None:
            out = torch.where(self.replace_mask[None, :, None], replaced, out)
        return out


def _check_write_modes(topology: CanvasTopology, write_modes: Sequence[str] | None) -> tuple[str, ...]:
    """One write mode per connection (default ``"add"``), or an error naming the culprit."""
    conns = topology.connections
    if write_modes is None:
        return ("add",) * len(conns)
    modes = tuple(write_modes)
    if len(modes) != len(conns):
        msg = f"CanvasAttention: {len(modes)} write_modes for {len(conns)} connections; give one per connection"
        raise CanvasValidationError(msg)
    for i, (conn, mode) in enumerate(zip(conns, modes)):
        if mode not in WRITE_MODES:
            msg = f"{conn.label} (#{i}): unknown write mode {mode!r}; choose one of {', '.join(WRITE_MODES)}"
            raise CanvasValidationError(msg)
    return modes
