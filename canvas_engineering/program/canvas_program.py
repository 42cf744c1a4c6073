"""``CanvasProgram``: a schema plus the process semantics of its regions and connections."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.topology import CanvasTopology, Connection, TemporalFill
from canvas_engineering.errors import (
    CanvasValidationError,
    ProgramCycleError,
    ProgramValidationError,
    UnknownAttentionTypeError,
)
from canvas_engineering.program._checks import prefix_message
from canvas_engineering.program.connection_program import ConnectionProgram
from canvas_engineering.program.region_program import RegionProgram
from canvas_engineering.program.serialisation import (
    program_from_dict,
    program_from_json,
    program_to_dict,
    program_to_json,
)
from canvas_engineering.program.vocabulary import FAMILIES
from canvas_engineering.program.wiring import family_wiring, find_cycle
from canvas_engineering.validation import check_bool, is_int

if TYPE_CHECKING:
    import torch

    from canvas_engineering.declare.layout import CanvasLayout

__all__ = ["CanvasProgram"]


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
        self._set_regions(self.schema.layout)
        self._set_connections()
        check_bool(self.acyclic, "CanvasProgram.acyclic", error=ProgramValidationError, sep=" ")
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
                prefix_message(err, f"region {name!r}: ")
                raise
        out = {name: regions.get(name, RegionProgram()) for name in layout.regions}
        for name, rp in out.items():
            source = rp.clock.source
            if rp.clock.watched_region(name) is not None and source is not None and source not in layout.regions:
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
                if not is_int(index) or not 0 <= index < len(conns):
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
        for i, (conn, value) in enumerate(zip(conns, programs, strict=True)):
            try:
                out.append(ConnectionProgram.coerce(value))
            except UnknownAttentionTypeError as err:
                # the operator's own message says "connection program operator": name the connection instead
                text = str(err).replace("connection program operator", f"{conn.label} (#{i}) operator", 1)
                err.args = (text, *err.args[1:])
                raise
            except CanvasValidationError as err:
                prefix_message(err, f"{conn.label} (#{i}): ")
                raise
        object.__setattr__(self, "connections", tuple(out))

    def _check_acyclic(self) -> None:
        edges: dict[str, list[tuple[str, int]]] = {}
        for i, conn in enumerate(self.schema.topology.connections):
            if conn.src != conn.dst and self.operator(i) != "none":
                edges.setdefault(conn.src, []).append((conn.dst, i))
        cycle = find_cycle(list(self.schema.layout.regions), edges)
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
        """Build a program whose topology is the default wiring of its regions' families.

        Every region reads itself at its own frame (``t_src=0, t_dst=0``) and at the previous
        frame (``t_dst=-1``), and reads at its own frame every region of the families its
        family reads (:data:`~canvas_engineering.program.FAMILIES`): state <- observation;
        memory <- state; action <- state, observation; residual <- every other region;
        observation <- nothing else. Regions not in ``families`` are ``"state"``.

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
            n: RegionProgram(family=f)  # type: ignore[arg-type]
            for n, f in families.items()
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
                prefix_message(err, f"region {name!r}: ")
                raise
        topology = family_wiring(list(layout.regions), resolved, temporal_fill)
        schema = CanvasSchema(layout, topology, dict(metadata or {}))
        return cls(schema, programs, acyclic=acyclic, metadata=dict(metadata or {}))

    # -- queries --------------------------------------------------------------------------

    def operator(self, index: int) -> str:
        """Return the attention type of connection ``index``: its ``operator``, else its resolved ``fn``."""
        conn = self.schema.topology.connections[index]
        op = self.connections[index].operator
        return op if op is not None else self.schema.topology.resolve_fn(conn, self.schema.layout)

    def loss_weight(self, name: str) -> float:
        """Return the effective loss weight of a region (``loss_weight``, else family scale x layout weight)."""
        rp = self.regions[name]
        if rp.loss_weight is not None:
            return rp.loss_weight
        return FAMILIES[rp.family].loss_scale * self.schema.layout.region_spec(name).loss_weight

    def regions_with(self, *, carrier: str | None = None, compile_mode: str | None = None) -> list[str]:
        """Return the region names (layout order) with the given carrier and/or compile mode."""
        return [
            n
            for n, rp in self.regions.items()
            if (carrier is None or rp.carrier == carrier) and (compile_mode is None or rp.compile_mode == compile_mode)
        ]

    def _executed(self) -> list[int]:
        constant = set(self.regions_with(compile_mode="constant"))
        return [i for i, c in enumerate(self.schema.topology.connections) if c.src not in constant]

    def execution_topology(self) -> CanvasTopology:
        """Return the topology a backbone runs.

        Each connection's ``fn`` is set to its operator, and connections whose src (query)
        region is ``constant`` are removed (constant regions are folded out: they are read as
        keys, never computed as queries).
        """
        conns = self.schema.topology.connections
        out = []
        for i in self._executed():
            fields = {**conns[i].to_dict(), "fn": self.operator(i)}
            out.append(Connection(**fields))
        return CanvasTopology(out)

    def execution_write_modes(self) -> tuple[str, ...]:
        """Return the write mode of every connection of :meth:`execution_topology`, in order."""
        return tuple(self.connections[i].write_mode for i in self._executed())

    def update_mask(self, name: str, batch: Mapping[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """(B, t) bool: which frames of region ``name`` update (its clock over the batch).

        Raises:
            ProgramValidationError: the clock watches a region the batch lacks (named).

        """
        import torch

        layout = self.schema.layout
        clock = self.regions[name].clock
        real = layout.frame_real_times[layout.region_names.index(name)]
        real = real[real >= 0]
        source = clock.watched_region(name)
        if source is None:
            return clock.update_mask(real, batch_size)
        if source not in batch:
            msg = f"region {name!r}: its on_event clock watches region {source!r}, which the batch lacks"
            raise ProgramValidationError(msg)
        watched_real = layout.frame_real_times[layout.region_names.index(source)]
        watched = torch.as_tensor(batch[source])
        return clock.update_mask(real.to(watched.device), batch_size, watched, watched_real[watched_real >= 0])

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: ``version``, ``schema``, ``regions``, ``connections``, ``acyclic``, ``metadata``.

        The schema keeps every connection field, temporal fill and interpolation order included.
        """
        return program_to_dict(self)

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """Return the program as JSON text; with ``path``, also written there atomically."""
        return program_to_json(self, path, indent)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> CanvasProgram:
        """Load from JSON text or a file path.

        Raises:
            ProgramValidationError: unreadable file, invalid JSON or a bad key (named).

        """
        return program_from_json(cls, source)

    @classmethod
    def from_dict(cls, data: object, where: str = "program") -> CanvasProgram:
        """Build from a dict as written by :meth:`to_dict`, naming the first missing or bad key.

        Raises:
            ProgramValidationError: a missing or bad key; errors of the program itself keep
                their class and attributes (e.g. :class:`ProgramCycleError` its ``connections``).

        """
        return program_from_dict(cls, data, where)

    @classmethod
    def coerce(cls, value: CanvasProgram | Mapping[str, Any] | str | os.PathLike[str]) -> CanvasProgram:
        """Build a program from itself, its dict, JSON text or a JSON file path."""
        if isinstance(value, CanvasProgram):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, (str, os.PathLike)):
            return cls.from_json(value)
        msg = f"a program must be a CanvasProgram, its dict, JSON text or a JSON file path, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    def summary(self) -> str:
        """Describe the program: one line per region and per non-default connection."""
        lines = [
            f"CanvasProgram: {len(self.regions)} regions, {len(self.connections)} connections, acyclic={self.acyclic}"
        ]
        for name, rp in self.regions.items():
            when = rp.clock.describe()
            lines.append(
                f"  {name:<16}{rp.family:<13}{rp.carrier:<15}{rp.compile_mode:<10}w={self.loss_weight(name):g}  {when}"
            )
        for i, (conn, cp) in enumerate(zip(self.schema.topology.connections, self.connections, strict=True)):
            if cp != ConnectionProgram():
                lines.append(f"  {conn.label} (#{i}): operator={self.operator(i)} write_mode={cp.write_mode}")
        return "\n".join(lines)
