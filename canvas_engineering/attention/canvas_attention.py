"""``CanvasAttention``: run a compiled topology, one fused call per attention type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from canvas_engineering.attention.attention_type import check_input_dtype
from canvas_engineering.attention.kernels import check_beta
from canvas_engineering.compilation.attention_mask import AttentionMask, check_kernel
from canvas_engineering.compilation.compiler import AttentionPlan, compile_topology, position_coords
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.topology import CanvasTopology, Connection
from canvas_engineering.errors import CanvasValidationError, UnknownAttentionTypeError
from canvas_engineering.plugin_host.host import PluginRegistry, get_registry
from canvas_engineering.program import WRITE_MODES

__all__ = ["AttentionGroup", "CanvasAttention", "position_coords", "resolve_plan"]


def resolve_plan(layout: CanvasLayout | AttentionPlan, topology: CanvasTopology | None, where: str) -> AttentionPlan:
    """Return the plan of ``(layout, topology)``: ``layout`` itself when it is already a compiled plan.

    Lets a model compile once and pass the plan to every block, while ``(layout, topology)``
    keeps working for a module built alone.

    Raises:
        CanvasValidationError: neither a plan nor a (layout, topology) pair, or a plan given
            with a different topology.

    """
    if isinstance(layout, AttentionPlan):
        if topology is not None and topology is not layout.topology and topology != layout.topology:
            msg = f"{where}: got a compiled AttentionPlan and a different topology; pass the plan alone"
            raise CanvasValidationError(msg)
        return layout
    if isinstance(layout, CanvasLayout) and isinstance(topology, CanvasTopology):
        return compile_topology(layout, topology)
    msg = (
        f"{where}: expected an AttentionPlan or a (CanvasLayout, CanvasTopology) pair, "
        f"got ({type(layout).__name__}, {type(topology).__name__})"
    )
    raise CanvasValidationError(msg)


class AttentionGroup(nn.Module):
    """The connections of one resolved attention type and write mode, run as one call.

    Attributes:
        fn: the attention type name.
        connections: the connections it runs.
        indices: their indices in the topology (the key of the plan's group mask).
        mask: the group's :class:`AttentionMask` (shared with every block running the same plan).
        op: the attention type module.
        write_mode: ``"add"``, ``"gate"`` or ``"replace"`` (see :class:`CanvasAttention`).
        gate_logit: (1,) learned gate logit of a ``"gate"`` group, zero-initialised (gate 0.5).

    """

    def __init__(
        self,
        fn: str,
        connections: list[Connection],
        mask: AttentionMask,
        op: nn.Module,
        write_mode: str = "add",
        indices: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.fn = fn
        self.connections = connections
        self.indices = tuple(indices)
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
        #: queries and keys are the same positions in the same order: gather the tokens once
        self.same_positions = torch.equal(mask.q_positions, mask.k_positions)

    def _take(self, x: torch.Tensor, positions: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
        # index_select: its backward is an index_add, much cheaper than indexing's index_put
        return x[:, span[0] : span[1]] if span is not None else x.index_select(1, positions)

    def forward(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """(B, nq, d) updates for the group's queries (a ``"gate"`` group's already gated)."""
        xq = self._take(x, self.q_positions, self.q_range)
        xk = xq if self.same_positions else self._take(x, self.k_positions, self.k_range)
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
        layout: the canvas layout, or an already compiled :class:`AttentionPlan` (then
            ``topology`` may be omitted): a model compiles once and passes the plan to every
            block, which then also share each group's mask and its device views.
        topology: the attention graph (``None`` when ``layout`` is a plan).
        d_model: token width (defaults to ``layout.d_model``).
        n_heads: attention heads.
        kernel: ``"auto"`` (flex on GPU, tile-packed SDPA on CPU), ``"flex"``, ``"tiled"`` or ``"dense"``.
        type_config: per-type options, ``{"local_attention": {"window": 2}}``.
        write_modes: one write mode per connection of ``topology`` (``None``: all ``"add"``).
        registry: the plugin registry the attention types come from (default:
            :func:`canvas_engineering.plugin_host.host.get_registry`).

    Attributes:
        plan: the compiled :class:`AttentionPlan` (the one passed in, if any).

    Raises:
        UnknownAttentionTypeError: a connection resolves to a type that is not installed
            (the message names the connection and lists the installed types).
        CanvasValidationError: ``write_modes`` has the wrong length or an unknown mode (named),
            an unknown kernel, or a plan passed with a different topology.

    Shapes: ``forward(x (B, N, d_model), beta) -> (B, N, d_model)``.

    """

    def __init__(
        self,
        layout: CanvasLayout | AttentionPlan,
        topology: CanvasTopology | None = None,
        d_model: int | None = None,
        n_heads: int = 4,
        kernel: str = "auto",
        type_config: Mapping[str, Mapping[str, Any]] | None = None,
        write_modes: Sequence[str] | None = None,
        *,
        registry: PluginRegistry | None = None,
    ) -> None:
        super().__init__()
        check_kernel(kernel, "CanvasAttention")
        self.plan: AttentionPlan = resolve_plan(layout, topology, "CanvasAttention")
        layout, topology = self.plan.layout, self.plan.topology
        modes = _check_write_modes(topology, write_modes)
        self.layout = layout
        self.topology = topology
        self.d_model = d_model or layout.d_model
        self.n_heads = n_heads
        types = (registry if registry is not None else get_registry()).attention_types
        type_config = dict(type_config or {})
        by_type: dict[tuple[str, str], list[int]] = {}
        for i, (conn, mode) in enumerate(zip(topology.connections, modes, strict=True)):
            fn = topology.resolve_fn(conn, layout)
            if fn not in types:
                msg = (
                    f"{conn.label}: attention type {fn!r} is not installed; "
                    f"installed types: {', '.join(sorted(types.names()))}"
                )
                raise UnknownAttentionTypeError(msg)
            by_type.setdefault((fn, mode), []).append(i)
        self.groups = nn.ModuleList()
        replaced = torch.zeros(layout.num_positions, dtype=torch.bool)
        for (fn, mode), indices in by_type.items():
            mask = self.plan.group_mask(indices, kernel)
            op = types[fn].obj(d_model=self.d_model, n_heads=n_heads, **dict(type_config.get(fn, {})))
            conns = [topology.connections[i] for i in indices]
            self.groups.append(AttentionGroup(fn, conns, mask, op, mode, indices))
            if mode == "replace":
                replaced[mask.q_positions] = True
        #: (N,) bool: positions some replace group writes (None when there is no such group)
        self.replace_mask: torch.Tensor | None
        self.register_buffer("replace_mask", replaced if bool(replaced.any()) else None, persistent=False)

    def set_kernel(self, kernel: str) -> None:
        """Run every group with ``kernel`` (``"auto"``, ``"flex"``, ``"tiled"``, ``"dense"``).

        Only this module changes; other blocks running the same plan keep their kernel.

        Raises:
            CanvasValidationError: unknown kernel name.

        """
        check_kernel(kernel, "CanvasAttention.set_kernel")
        for group in self.groups:
            group.mask = self.plan.group_mask(group.indices, kernel)

    def forward(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """Map canvas tokens (B, N, d_model) to attention updates (B, N, d_model).

        ``beta`` (finite, > 0) multiplies the attention logits. A non-finite token never
        reaches a position the mask forbids from reading it: output position ``i`` is
        non-finite exactly when a group whose output counts at ``i`` (the replace groups
        where one writes ``i``, else the add and gate groups) has ``i`` as a query and either
        ``i``'s own token is non-finite or ``i`` may read a non-finite token (see
        :mod:`~canvas_engineering.attention.kernels`). Projections act per token, so this holds
        for every softmax and score-based type.

        Raises:
            CanvasValidationError: tokens of the wrong shape, or ``beta`` not a finite number > 0.
            PrecisionError: tokens whose dtype cannot run through the module.

        """
        beta = check_beta(beta, "CanvasAttention.forward")
        n = self.layout.num_positions
        if x.dim() != 3 or x.shape[1] != n or x.shape[2] != self.d_model:
            msg = f"CanvasAttention expects tokens of shape (B, {n}, {self.d_model}), got {tuple(x.shape)}"
            raise CanvasValidationError(msg)
        check_input_dtype(x, self, "CanvasAttention")  # a named PrecisionError, not a bare dtype error deep inside
        if len(self.groups) == 1 and self.groups[0].q_range == (0, n):
            return self.groups[0](x, beta).to(x.dtype)  # one group over every position, in order
        if len(self.groups) == 1:  # positions of one group are distinct: copy, nothing to add
            group = self.groups[0]
            return torch.zeros_like(x).index_copy(1, group.q_positions, group(x, beta).to(x.dtype))
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
    for i, (conn, mode) in enumerate(zip(conns, modes, strict=True)):
        if mode not in WRITE_MODES:
            msg = f"{conn.label} (#{i}): unknown write mode {mode!r}; choose one of {', '.join(WRITE_MODES)}"
            raise CanvasValidationError(msg)
    return modes
