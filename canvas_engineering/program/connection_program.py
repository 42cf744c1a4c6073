"""``ConnectionProgram``: the process semantics of one connection (operator and write mode)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canvas_engineering.declare.attention_vocabulary import check_attention_type
from canvas_engineering.errors import ProgramValidationError
from canvas_engineering.program._checks import from_mapping, require_choice
from canvas_engineering.program.vocabulary import WRITE_MODES, WriteModeName

__all__ = ["ConnectionProgram"]


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
        ProgramValidationError: an unknown write mode (named).
        UnknownAttentionTypeError: an unknown operator (named).

    """

    operator: str | None = None
    write_mode: WriteModeName = "add"

    def __post_init__(self) -> None:
        if self.operator is not None:
            check_attention_type(self.operator, "connection program operator")
        require_choice("connection program", "write mode", self.write_mode, WRITE_MODES)

    @classmethod
    def coerce(cls, value: ConnectionProgram | Mapping[str, Any] | None) -> ConnectionProgram:
        """Build a ``ConnectionProgram`` from itself, its dict or ``None`` (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, ConnectionProgram):
            return value
        if isinstance(value, Mapping):
            return from_mapping(cls, value, "")
        msg = f"must be a ConnectionProgram, its dict or None, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return {"operator": self.operator, "write_mode": self.write_mode}
