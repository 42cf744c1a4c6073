"""``CanvasProgram``: what each region *is* and how it runs, on top of a ``CanvasSchema``.

The schema says where regions live and who attends to whom. A program adds, per region, a
*family* (what kind of quantity it holds), a *carrier* (how it is predicted), a *clock* (at
which frames it updates) and a *compile mode* (whether it learns, is folded out, or is
returned), and per connection an *operator* (the attention type that runs it) and a *write
mode* (how its output is combined with the other connections'). Every field has a run-time
effect when a :class:`~canvas_engineering.CanvasModule` is built with ``program=``:

=================  ========================================================================
property           effect in ``CanvasModule``
=================  ========================================================================
family             default carrier and loss scale (:data:`FAMILIES`); default wiring in
                   :meth:`CanvasProgram.from_families`
carrier            which positions are predicted and how (see :data:`CARRIERS`)
clock              which predicted frames update; elsewhere the value is held, no loss
compile_mode       ``freeze``: codec frozen, tokens detached; ``constant``: a fixed buffer,
                   never a query, never predicted; ``export``: returned by ``predict_step``
operator           the attention type of the connection (replaces its ``fn``)
write_mode         ``add`` (sum), ``gate`` (learned sigmoid gate), ``replace`` (overwrite)
=================  ========================================================================

Family defaults (:data:`FAMILIES`; wiring used by :meth:`CanvasProgram.from_families`):

===========  =============  ==========  ===================================================
family       carrier        loss scale  reads (besides itself at its frame and the previous)
===========  =============  ==========  ===================================================
observation  filter         1.0         nothing else
state        diffusive      1.0         observation
memory       memory         1.0         state
action       diffusive      2.0         state, observation
residual     residual       0.5         every other region
===========  =============  ==========  ===================================================

A region's loss weight is ``RegionProgram.loss_weight`` when given, else the family's loss
scale times the layout's ``RegionSpec.loss_weight``. A region the program does not list is
``RegionProgram()``: family ``state``, carrier ``diffusive``, every frame, ``runtime``, so an
empty program runs exactly like no program (apart from what ``predict_step`` returns).

Example::

    >>> from canvas_engineering import CanvasLayout
    >>> layout = CanvasLayout(T=4, H=2, W=2, d_model=8, t_current=2,
    ...     regions={"obs": (0, 4, 0, 1, 0, 2), "act": (0, 4, 1, 2, 0, 2)})
    >>> program = CanvasProgram.from_families(layout, {"obs": "observation", "act": "action"})
    >>> program.regions["act"].carrier, program.loss_weight("act")
    ('diffusive', 2.0)
    >>> CanvasProgram.from_json(program.to_json()) == program
    True

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

from canvas_engineering._json_source import read_json_source, write_json
from canvas_engineering.attention_types import check_attention_type
from canvas_engineering.errors import CanvasValidationError, UnknownAttentionTypeError
from canvas_engineering.schema import CanvasSchema
from canvas_engineering.topology import CanvasTopology, Connection, TemporalFill

if TYPE_CHECKING:
    import torch

    from canvas_engineering.layout import CanvasLayout

__all__ = [
    "CARRIERS",
    "COMPILE_MODES",
    "FAMILIES",
    "PROGRAM_FORMAT_VERSION",
    "WRITE_MODES",
    "CanvasProgram",
    "Clock",
    "ConnectionProgram",
    "FamilyDefaults",
    "ProgramCycleError",
    "ProgramValidationError",
    "RegionProgram",
]

#: Version written into every program file.
PROGRAM_FORMAT_VERSION = 1

Family = Literal["observation", "state", "memory", "residual", "action"]
Carrier = Literal["deterministic", "diffusive", "filter", "memory", "residual"]
CompileMode = Literal["runtime", "freeze", "constant", "export"]
WriteMode = Literal["add", "replace", "gate"]
ClockKind = Literal["periodic", "on_event", "boundary"]
Boundary = Literal["start", "end", "both"]

#: Carrier -> how ``CanvasModule`` predicts the region ("future" = real frame >= t_current).
CARRIERS: MappingProxyType[str, str] = MappingProxyType(
    {
        "deterministic": "future output frames hold zeros (not noise) and are regressed from the clean context",
        "diffusive": "future output frames are noised and denoised (the layout decides which frames are outputs)",
        "filter": "future frames are noised and denoised even for an input region; past frames are always given",
        "memory": "like deterministic; predict_step also returns the last frame as memory_out for the next window",
        "residual": "noised like diffusive; the prediction is the decoder output plus the previous frame's value",
    }
)

#: The compile modes.
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

#: The write modes of a connection (``CanvasAttention`` combines group outputs by them).
WRITE_MODES: tuple[str, ...] = get_args(WriteMode)


class FamilyDefaults(NamedTuple):
    """What a family implies: default carrier, loss scale and the families it reads."""

    #: carrier used when a ``RegionProgram`` names none
    carrier: str
    #: multiplies the layout's loss weight when a ``RegionProgram`` names no ``loss_weight``
    loss_scale: float
    #: families whose regions it reads at the same frame in :meth:`CanvasProgram.from_families`
    reads: tuple[str, ...]


#: Family -> its defaults (the table in the module docstring).
FAMILIES: MappingProxyType[str, FamilyDefaults] = MappingProxyType(
    {
        "observation": FamilyDefaults("filter", 1.0, ()),
        "state": FamilyDefaults("diffusive", 1.0, ("observation",)),
        "memory": FamilyDefaults("memory", 1.0, ("state",)),
        "action": FamilyDefaults("diffusive", 2.0, ("state", "observation")),
        "residual": FamilyDefaults("residual", 0.5, ("observation", "state", "memory", "action", "residual")),
    }
)


class ProgramValidationError(CanvasValidationError):
    """A program breaks a rule; the message names the region or connection."""


class ProgramCycleError(ProgramValidationError):
    """An ``acyclic`` program's cross-region connections form a cycle.

    Attributes:
        connections: indices of the connections on the cycle, in order.
    """

    def __init__(self, message: str, connections: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.connections = tuple(connections)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(owner: str, name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        msg = f"{owner}: unknown {name} {value!r}; choose one of {', '.join(choices)}"
        raise ProgramValidationError(msg)


# -- clocks ----------------------------------------------------------------------------------



def _from_mapping(cls: type, value: Mapping[str, Any], label: str) -> Any:  # noqa: ANN401
    """``cls(**value)``, turning a bad or missing keyword into a ProgramValidationError."""
    try:
        return cls(**dict(value))
    except TypeError as err:
        msg = f"{label}{err}"
        raise ProgramValidationError(msg) from None


@dataclass(frozen=True)
class Clock:
    """When a region updates. Frames are the region's own canvas frames ``k = 0 .. t-1``,
    standing at real times ``t0 + k * period_of_region``.

    * ``"periodic"``: updates at frames whose real time ``r`` has ``(r - phase) % period == 0``.
    * ``"boundary"``: updates at the region's first frame (``"start"``), last (``"end"``) or
      both.
    * ``"on_event"``: updates at frame ``k`` when the watched region ``source`` (default: the
      region itself) *changed* by more than ``threshold`` at a real time in
      ``(real(k-1), real(k)]`` (``k = 0``: up to ``real(0)``), and not within ``cooldown``
      frames after its previous update. The change at a watched frame ``j >= 1`` is the mean
      absolute difference between frames ``j`` and ``j - 1`` of the batch tensor, per sample.

    Args:
        kind: ``"periodic"``, ``"on_event"`` or ``"boundary"``.
        period: real frames between updates (``periodic``; integer >= 1).
        phase: real-frame offset of the updates (``periodic``; in ``[0, period)``).
        threshold: smallest change that fires (``on_event``; finite, >= 0).
        cooldown: frames after an update during which no update fires (``on_event``; >= 0).
        source: region watched by ``on_event`` (``None``: the region itself).
        boundary: ``"start"``, ``"end"`` or ``"both"`` (``boundary``).

    Raises:
        ProgramValidationError: naming the field and the value (a program adds the region).
    """

    kind: ClockKind = "periodic"
    period: int = 1  # periodic: every `period` real frames
    phase: int = 0  # periodic: first real frame of the cycle
    threshold: float = 0.0  # on_event: mean |x_j - x_{j-1}| above which it fires
    cooldown: int = 0  # on_event: frames suppressed after an update
    source: str | None = None  # on_event: watched region (None: the region itself)
    boundary: Boundary = "both"  # boundary: which end(s) of the window

    def __post_init__(self) -> None:
        _choice("clock", "kind", self.kind, get_args(ClockKind))
        if not _is_int(self.period) or self.period < 1:
            msg = f"clock period {self.period!r} must be an integer >= 1"
            raise ProgramValidationError(msg)
        if not _is_int(self.phase) or not 0 <= self.phase < self.period:
            msg = f"clock phase {self.phase!r} must be an integer in [0, period={self.period})"
            raise ProgramValidationError(msg)
        if not _is_number(self.threshold) or self.threshold < 0:
            msg = f"clock threshold {self.threshold!r} must be a finite number >= 0"
            raise ProgramValidationError(msg)
        object.__setattr__(self, "threshold", float(self.threshold))
        if not _is_int(self.cooldown) or self.cooldown < 0:
            msg = f"clock cooldown {self.cooldown!r} must be an integer >= 0"
            raise ProgramValidationError(msg)
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            msg = f"clock source {self.source!r} must be a region name or None"
            raise ProgramValidationError(msg)
        _choice("clock", "boundary", self.boundary, get_args(Boundary))

    @classmethod
    def coerce(cls, value: Clock | Mapping[str, Any] | None) -> Clock:
        """A ``Clock`` from itself, its dict (``to_dict``) or ``None`` (every frame)."""
        if value is None:
            return cls()
        if isinstance(value, Clock):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(cls, value, f"clock {dict(value)!r}: ")
        msg = f"clock must be a Clock, a dict or None, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    @property
    def every_frame(self) -> bool:
        """Whether it updates at every frame (periodic with period 1)."""
        return self.kind == "periodic" and self.period == 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {
            "kind": self.kind,
            "period": self.period,
            "phase": self.phase,
            "threshold": self.threshold,
            "cooldown": self.cooldown,
            "source": self.source,
            "boundary": self.boundary,
        }

    def update_mask(
        self, real_times: torch.Tensor, batch_size: int, watched: torch.Tensor | None = None,
        watched_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, t) bool: which of the region's frames update, per sample.

        Args:
            real_times: (t,) real time of each of the region's frames.
            batch_size: B.
            watched: (B, t_w, ...) the batch tensor of the watched region (``on_event`` only).
            watched_times: (t_w,) real time of each watched frame (``on_event`` only).
        """
        import torch

        t = real_times.numel()
        if self.kind == "periodic":
            fires = torch.remainder(real_times - self.phase, self.period) == 0
            return fires[None].expand(batch_size, t)
        if self.kind == "boundary":
            k = torch.arange(t, device=real_times.device)
            fires = torch.zeros(t, dtype=torch.bool, device=real_times.device)
            if self.boundary in ("start", "both"):
                fires |= k == 0
            if self.boundary in ("end", "both"):
                fires |= k == t - 1
            return fires[None].expand(batch_size, t)
        if watched is None or watched_times is None:
            msg = "an on_event clock needs the watched region's batch tensor"
            raise ProgramValidationError(msg)
        x = watched.float()
        change = (x[:, 1:] - x[:, :-1]).abs().flatten(2).mean(-1)  # (B, t_w - 1), at watched frames 1..
        events = change > self.threshold
        at = watched_times[1:].to(real_times.device)  # (t_w - 1,)
        lower = torch.cat([real_times.new_full((1,), -1 << 62), real_times[:-1]])  # (t,)
        window = (at[None, :] > lower[:, None]) & (at[None, :] <= real_times[:, None])  # (t, t_w - 1)
        raw = (events.to(real_times.device)[:, None, :] & window[None]).any(-1)  # (B, t)
        if self.cooldown == 0:
            return raw
        fires = torch.zeros_like(raw)
        last = torch.full((raw.shape[0],), -(self.cooldown + 1), dtype=torch.long, device=raw.device)
        for k in range(t):  # a loop over frames, vectorised over the batch
            fires[:, k] = raw[:, k] & (k - last > self.cooldown)
            last = torch.where(fires[:, k], torch.full_like(last, k), last)
        return fires


# -- region and connection programs -------------------------------------------------------


@dataclass(frozen=True)
class RegionProgram:
    """Process semantics of one region.

    Args:
        family: ``"observation"``, ``"state"``, ``"memory"``, ``"residual"`` or ``"action"``
            (:data:`FAMILIES`).
        carrier: ``"deterministic"``, ``"diffusive"``, ``"filter"``, ``"memory"`` or
            ``"residual"`` (:data:`CARRIERS`); ``None``: the family's default.
        clock: when the region updates (a :class:`Clock` or its dict; ``None``: every frame).
        compile_mode: ``"runtime"`` (normal), ``"freeze"`` (its encoder/decoder get no
            gradient, its tokens are detached), ``"constant"`` (a fixed buffer of
            ``constant_value``, never encoded, noised, decoded, lossed or run as queries; a
            batch may omit it) or ``"export"`` (``predict_step`` returns it even if it is an
            input).
        loss_weight: the region's loss weight (finite, >= 0); ``None``: the family's loss
            scale times the layout's ``RegionSpec.loss_weight``.
        constant_value: token content of a ``constant`` region: a number for every entry, or
            a ``d_model``-long vector for every token.

    Raises:
        ProgramValidationError: naming the field and the value (a program adds the region).
    """

    family: Family = "state"
    carrier: Carrier | None = None  # None: FAMILIES[family].carrier
    clock: Clock | None = None  # None: Clock() (every frame)
    compile_mode: CompileMode = "runtime"
    loss_weight: float | None = None  # None: family loss scale x RegionSpec.loss_weight
    constant_value: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        _choice("region program", "family", self.family, tuple(FAMILIES))
        if self.carrier is None:
            object.__setattr__(self, "carrier", FAMILIES[self.family].carrier)
        _choice("region program", "carrier", self.carrier, tuple(CARRIERS))
        object.__setattr__(self, "clock", Clock.coerce(self.clock))
        _choice("region program", "compile mode", self.compile_mode, COMPILE_MODES)
        if self.loss_weight is not None:
            if not _is_number(self.loss_weight) or self.loss_weight < 0:
                msg = f"loss_weight {self.loss_weight!r} must be a finite number >= 0 or None"
                raise ProgramValidationError(msg)
            object.__setattr__(self, "loss_weight", float(self.loss_weight))
        value = self.constant_value
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value or not all(_is_number(v) for v in value):
                msg = f"constant_value {value!r} must be a number or a non-empty list of finite numbers"
                raise ProgramValidationError(msg)
            object.__setattr__(self, "constant_value", tuple(float(v) for v in value))
        elif _is_number(value):
            object.__setattr__(self, "constant_value", float(value))
        else:
            msg = f"constant_value {value!r} must be a finite number or a list of them"
            raise ProgramValidationError(msg)

    @classmethod
    def coerce(cls, value: RegionProgram | Mapping[str, Any] | str) -> RegionProgram:
        """A ``RegionProgram`` from itself, its dict, or a family name."""
        if isinstance(value, RegionProgram):
            return value
        if isinstance(value, str):
            return cls(family=value)
        if isinstance(value, Mapping):
            return _from_mapping(cls, value, "")
        msg = f"must be a RegionProgram, its dict or a family name, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        value = self.constant_value
        return {
            "family": self.family,
            "carrier": self.carrier,
            "clock": self.clock.to_dict(),
            "compile_mode": self.compile_mode,
            "loss_weight": self.loss_weight,
            "constant_value": list(value) if isinstance(value, tuple) else value,
        }


@dataclass(frozen=True)
class ConnectionProgram:
    """Process semantics of one connection.

    Args:
        operator: the attention type that runs the connection, resolved like
            ``Connection.fn`` (declared or installed types); ``None``: the connection's own
            ``fn`` (then the src region's ``default_attn``, then ``"cross_attention"``).
        write_mode: how its output enters the query positions: ``"add"`` (summed with the
            other connections'), ``"gate"`` (summed after a learned sigmoid gate, one scalar
            per attention group, starting at 0.5) or ``"replace"`` (at the positions it writes,
            its output replaces the sum of the others).

    Raises:
        ProgramValidationError / UnknownAttentionTypeError: naming the field and value.
    """

    operator: str | None = None
    write_mode: WriteMode = "add"

    def __post_init__(self) -> None:
        if self.operator is not None:
            check_attention_type(self.operator, "connection program operator")
        _choice("connection program", "write mode", self.write_mode, WRITE_MODES)

    @classmethod
    def coerce(cls, value: ConnectionProgram | Mapping[str, Any] | None) -> ConnectionProgram:
        """A ``ConnectionProgram`` from itself, its dict or ``None`` (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, ConnectionProgram):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(cls, value, "")
        msg = f"must be a ConnectionProgram, its dict or None, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {"operator": self.operator, "write_mode": self.write_mode}


# -- the program ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CanvasProgram:
    """A schema plus the process semantics of its regions and connections.

    Args:
        schema: the canvas declaration (layout + topology).
        regions: region name -> :class:`RegionProgram` (or its dict, or a family name).
            Every layout region the mapping omits gets ``RegionProgram()``.
        connections: one :class:`ConnectionProgram` (or dict, or ``None``) per connection of
            ``schema.topology``, in order; or a mapping ``{index: ConnectionProgram}``.
            Omitted connections get ``ConnectionProgram()``.
        acyclic: refuse a cycle among cross-region connections (a connection whose operator
            resolves to ``"none"`` does not count).
        metadata: free-form JSON-serialisable information.

    Raises:
        ProgramValidationError: a region program names a region the layout lacks, or breaks
            a rule (unknown family/carrier/compile mode, clock period < 1, phase outside
            ``[0, period)``, negative cooldown, unknown clock source, constant vector of the
            wrong length); a connection program is misaligned or has an unknown write mode.
            The message names the region or the connection (with its index).
        UnknownAttentionTypeError: an operator is neither declared nor installed (names the
            connection).
        ProgramCycleError: ``acyclic`` and the connections form a cycle (names each one).
    """

    schema: CanvasSchema
    regions: Mapping[str, RegionProgram] = field(default_factory=dict)
    connections: Sequence[ConnectionProgram] | Mapping[int, ConnectionProgram] = ()
    acyclic: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.schema, CanvasSchema):
            msg = f"CanvasProgram.schema must be a CanvasSchema, got {type(self.schema).__name__}"
            raise ProgramValidationError(msg)
        layout = self.schema.layout
        self._set_regions(layout)
        self._set_connections()
        if not isinstance(self.acyclic, bool):
            msg = f"CanvasProgram.acyclic {self.acyclic!r} must be a bool"
            raise ProgramValidationError(msg)
        if not isinstance(self.metadata, Mapping):
            msg = f"CanvasProgram.metadata must be a mapping, got {type(self.metadata).__name__}"
            raise ProgramValidationError(msg)
        try:
            json.dumps(dict(self.metadata))
        except (TypeError, ValueError) as err:
            msg = f"CanvasProgram.metadata is not JSON-serialisable: {err}"
            raise ProgramValidationError(msg) from None
        object.__setattr__(self, "metadata", dict(self.metadata))
        if self.acyclic:
            self._check_acyclic()

    def _set_regions(self, layout: CanvasLayout) -> None:
        if not isinstance(self.regions, Mapping):
            kind = type(self.regions).__name__
            msg = f"CanvasProgram.regions must be a mapping of region name -> RegionProgram, got {kind}"
            raise ProgramValidationError(msg)
        regions: dict[str, RegionProgram] = {}
        known = ", ".join(layout.regions) or "(none)"
        for name, value in self.regions.items():
            if name not in layout.regions:
                msg = f"region program for unknown region {name!r}; layout regions: {known}"
                raise ProgramValidationError(msg)
            try:
                regions[name] = RegionProgram.coerce(value)
            except CanvasValidationError as err:
                msg = f"region {name!r}: {err}"
                raise type(err)(msg) from None
        out = {name: regions.get(name, RegionProgram()) for name in layout.regions}
        for name, rp in out.items():
            source = rp.clock.source
            if rp.clock.kind == "on_event" and source is not None and source not in layout.regions:
                msg = f"region {name!r}: clock source {source!r} is not a region; layout regions: {known}"
                raise ProgramValidationError(msg)
            if isinstance(rp.constant_value, tuple) and len(rp.constant_value) != layout.d_model:
                msg = (
                    f"region {name!r}: constant_value has {len(rp.constant_value)} entries; "
                    f"a vector must have d_model={layout.d_model}"
                )
                raise ProgramValidationError(msg)
        object.__setattr__(self, "regions", out)

    def _set_connections(self) -> None:
        conns = self.schema.topology.connections
        raw = self.connections
        programs: list[ConnectionProgram | Any] = [None] * len(conns)
        if isinstance(raw, Mapping):
            for key, value in raw.items():
                index = int(key) if isinstance(key, str) and key.lstrip("-").isdigit() else key
                if not _is_int(index) or not 0 <= index < len(conns):
                    msg = f"connection program key {key!r} must be a connection index in [0, {len(conns)})"
                    raise ProgramValidationError(msg)
                programs[index] = value
        elif isinstance(raw, Sequence) and not isinstance(raw, str):
            if raw and len(raw) != len(conns):
                msg = (
                    f"CanvasProgram.connections has {len(raw)} entries but the topology has {len(conns)} "
                    "connections; give one per connection, in order, or a mapping {index: program}"
                )
                raise ProgramValidationError(msg)
            programs = list(raw) or programs
        else:
            msg = f"CanvasProgram.connections must be a list or a mapping, got {type(raw).__name__}"
            raise ProgramValidationError(msg)
        out = []
        for i, (conn, value) in enumerate(zip(conns, programs)):
            try:
                out.append(ConnectionProgram.coerce(value))
            except UnknownAttentionTypeError as err:
                msg = str(err).replace("connection program operator", f"{conn.label} (#{i}) operator", 1)
                raise UnknownAttentionTypeError(msg) from None
            except CanvasValidationError as err:
                msg = f"{conn.label} (#{i}): {err}"
                raise type(err)(msg) from None
        object.__setattr__(self, "connections", tuple(out))

    def _check_acyclic(self) -> None:
        layout = self.schema.layout
        edges: dict[str, list[tuple[str, int]]] = {}
        for i, conn in enumerate(self.schema.topology.connections):
            if conn.src != conn.dst and self.operator(i) != "none":
                edges.setdefault(conn.src, []).append((conn.dst, i))
        state = dict.fromkeys(layout.regions, 0)  # 0 new, 1 on the stack, 2 done
        path: list[tuple[str, int]] = []  # (region, connection index that reached it)

        def visit(node: str) -> list[int] | None:
            state[node] = 1
            for nxt, i in edges.get(node, []):
                if state[nxt] == 1:  # back edge: the cycle runs from nxt's place on the path
                    start = next(k for k, (r, _) in enumerate(path) if r == nxt)
                    return [c for _, c in path[start + 1 :]] + [i]
                if state[nxt] == 0:
                    path.append((nxt, i))
                    found = visit(nxt)
                    if found:
                        return found
                    path.pop()
            state[node] = 2
            return None

        for region in layout.regions:
            if state[region] == 0:
                path[:] = [(region, -1)]
                cycle = visit(region)
                if cycle:
                    conns = self.schema.topology.connections
                    named = ", ".join(f"{conns[i].label} (#{i})" for i in cycle)
                    msg = f"CanvasProgram(acyclic=True): cross-region connections form a cycle: {named}"
                    raise ProgramCycleError(msg, cycle)

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_families(
        cls,
        layout: CanvasLayout,
        families: Mapping[str, str],
        regions: Mapping[str, RegionProgram | Mapping[str, Any]] | None = None,
        *,
        temporal_fill: TemporalFill = TemporalFill.HOLD,
        acyclic: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> CanvasProgram:
        """A program whose topology is the default wiring of its regions' families.

        Every region reads itself at its own frame (``t_src=0, t_dst=0``) and at the previous
        frame (``t_dst=-1``), and reads at its own frame every region of the families its
        family reads (:data:`FAMILIES`): state <- observation; memory <- state; action <-
        state, observation; residual <- every other region; observation <- nothing else.
        Regions not in ``families`` are ``"state"``.

        Args:
            layout: the canvas layout.
            families: region name -> family.
            regions: full region programs overriding the family-only default (their family
                wins over ``families``).
            temporal_fill: fill mode of every generated connection (slow regions).
            acyclic: passed to the program.
            metadata: passed to the schema and the program.

        Raises:
            ProgramValidationError: an unknown region or family (named).
        """
        for name, family in families.items():
            if name not in layout.regions:
                msg = f"from_families: unknown region {name!r}; layout regions: {', '.join(layout.regions)}"
                raise ProgramValidationError(msg)
            if family not in FAMILIES:
                msg = f"region {name!r}: unknown family {family!r}; choose one of {', '.join(FAMILIES)}"
                raise ProgramValidationError(msg)
        programs: dict[str, RegionProgram | Mapping[str, Any]] = {
            n: RegionProgram(family=f) for n, f in families.items()  # type: ignore[arg-type]
        }
        programs.update(regions or {})
        resolved = dict.fromkeys(layout.regions, "state")
        for name, value in programs.items():
            if name not in layout.regions:
                msg = f"from_families: unknown region {name!r}; layout regions: {', '.join(layout.regions)}"
                raise ProgramValidationError(msg)
            try:
                resolved[name] = RegionProgram.coerce(value).family
            except CanvasValidationError as err:
                msg = f"region {name!r}: {err}"
                raise type(err)(msg) from None
        conns = []
        for name in layout.regions:
            conns.append(Connection(name, name, t_src=0, t_dst=0, temporal_fill=temporal_fill))
            conns.append(Connection(name, name, t_src=0, t_dst=-1, temporal_fill=temporal_fill))
            reads = FAMILIES[resolved[name]].reads
            for other in layout.regions:
                if other != name and resolved[other] in reads:
                    conns.append(Connection(name, other, t_src=0, t_dst=0, temporal_fill=temporal_fill))
        schema = CanvasSchema(layout, CanvasTopology(conns), dict(metadata or {}))
        return cls(schema, programs, acyclic=acyclic, metadata=dict(metadata or {}))

    # -- queries --------------------------------------------------------------------------

    def operator(self, index: int) -> str:
        """The attention type of connection ``index``: its ``operator``, else its resolved ``fn``."""
        conn = self.schema.topology.connections[index]
        op = self.connections[index].operator
        return op if op is not None else self.schema.topology.resolve_fn(conn, self.schema.layout)

    def loss_weight(self, name: str) -> float:
        """Effective loss weight of a region (``loss_weight``, else family scale x layout weight)."""
        rp = self.regions[name]
        if rp.loss_weight is not None:
            return rp.loss_weight
        return FAMILIES[rp.family].loss_scale * self.schema.layout.region_spec(name).loss_weight

    def regions_with(self, *, carrier: str | None = None, compile_mode: str | None = None) -> list[str]:
        """Region names (layout order) with the given carrier and/or compile mode."""
        return [
            n for n, rp in self.regions.items()
            if (carrier is None or rp.carrier == carrier) and (compile_mode is None or rp.compile_mode == compile_mode)
        ]

    def _executed(self) -> list[int]:
        constant = set(self.regions_with(compile_mode="constant"))
        return [i for i, c in enumerate(self.schema.topology.connections) if c.src not in constant]

    def execution_topology(self) -> CanvasTopology:
        """The topology a backbone runs: each connection's ``fn`` set to its operator, and
        connections whose src (query) region is ``constant`` removed (constant regions are
        folded out: they are read as keys, never computed as queries)."""
        conns = self.schema.topology.connections
        out = []
        for i in self._executed():
            c = conns[i]
            fields = {**c.to_dict(), "fn": self.operator(i)}
            out.append(Connection(**fields))
        return CanvasTopology(out)

    def execution_write_modes(self) -> tuple[str, ...]:
        """The write mode of every connection of :meth:`execution_topology`, in order."""
        return tuple(self.connections[i].write_mode for i in self._executed())

    def update_mask(self, name: str, batch: Mapping[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """(B, t) bool: which frames of region ``name`` update (its clock over the batch)."""
        import torch

        layout = self.schema.layout
        clock = self.regions[name].clock
        real = layout.frame_real_times[layout.region_names.index(name)]
        real = real[real >= 0]
        if clock.kind != "on_event":
            return clock.update_mask(real, batch_size)
        source = clock.source or name
        if source not in batch:
            msg = f"region {name!r}: its on_event clock watches region {source!r}, which the batch lacks"
            raise ProgramValidationError(msg)
        watched_real = layout.frame_real_times[layout.region_names.index(source)]
        watched = torch.as_tensor(batch[source])
        return clock.update_mask(real.to(watched.device), batch_size, watched, watched_real[watched_real >= 0])

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``version``, ``schema`` (every connection field, temporal fill and
        interpolation order included), ``regions``, ``connections``, ``acyclic``, ``metadata``."""
        return {
            "version": PROGRAM_FORMAT_VERSION,
            "schema": self.schema.to_dict(),
            "regions": {n: rp.to_dict() for n, rp in self.regions.items()},
            "connections": [cp.to_dict() for cp in self.connections],
            "acyclic": self.acyclic,
            "metadata": self.metadata,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """The program as JSON text; with ``path``, also written there atomically."""
        return write_json(self.to_dict(), path, indent)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> CanvasProgram:
        """Load from JSON text or a file path.

        Raises:
            ProgramValidationError: unreadable file, invalid JSON or a bad key (named).
        """
        data, where = read_json_source(source, "program", ProgramValidationError)
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, data: object, where: str = "program") -> CanvasProgram:
        """Build from a dict as written by :meth:`to_dict`, naming the first missing or bad key."""
        if not isinstance(data, Mapping):
            msg = f"{where}: must be an object, got {type(data).__name__}"
            raise ProgramValidationError(msg)
        version = data.get("version", PROGRAM_FORMAT_VERSION)
        if version != PROGRAM_FORMAT_VERSION:
            msg = f"{where}: key 'version' is {version!r}; this library reads version {PROGRAM_FORMAT_VERSION}"
            raise ProgramValidationError(msg)
        if "schema" not in data:
            msg = f"{where}: missing key 'schema'"
            raise ProgramValidationError(msg)
        schema = CanvasSchema.from_dict(data["schema"], where=f"{where}: key 'schema'")
        regions = data.get("regions", {})
        connections = data.get("connections", [])
        for key, value, kind in (("regions", regions, Mapping), ("connections", connections, (list, Mapping))):
            if not isinstance(value, kind):
                want = "an object" if kind is Mapping else "a list"
                msg = f"{where}: key {key!r} must be {want}, got {type(value).__name__}"
                raise ProgramValidationError(msg)
        try:
            return cls(
                schema,
                dict(regions),
                connections,
                acyclic=data.get("acyclic", False),
                metadata=data.get("metadata", {}),
            )
        except CanvasValidationError as err:
            msg = f"{where}: {err}"
            raise type(err)(msg) from None

    @classmethod
    def coerce(cls, value: CanvasProgram | Mapping[str, Any] | str | os.PathLike[str]) -> CanvasProgram:
        """A program from itself, its dict, JSON text or a JSON file path."""
        if isinstance(value, CanvasProgram):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, (str, os.PathLike)):
            return cls.from_json(value)
        msg = f"a program must be a CanvasProgram, its dict, JSON text or a JSON file path, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    def summary(self) -> str:
        """One line per region and per non-default connection."""
        lines = [
            f"CanvasProgram: {len(self.regions)} regions, {len(self.connections)} connections, acyclic={self.acyclic}"
        ]
        for name, rp in self.regions.items():
            clock = rp.clock
            when = "every frame" if clock.every_frame else clock.kind
            if clock.kind == "periodic" and not clock.every_frame:
                when = f"every {clock.period} (phase {clock.phase})"
            lines.append(
                f"  {name:<16}{rp.family:<13}{rp.carrier:<15}{rp.compile_mode:<10}"
                f"w={self.loss_weight(name):g}  {when}"
            )
        for i, (conn, cp) in enumerate(zip(self.schema.topology.connections, self.connections)):
            if cp != ConnectionProgram():
                lines.append(f"  {conn.label} (#{i}): operator={self.operator(i)} write_mode={cp.write_mode}")
        return "\n".join(lines)
