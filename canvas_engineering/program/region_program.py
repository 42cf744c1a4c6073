"""``RegionProgram``: the process semantics of one region (family, carrier, clock, compile mode)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canvas_engineering.errors import ProgramValidationError
from canvas_engineering.program._checks import from_mapping, require_choice
from canvas_engineering.program.clocks import Clock
from canvas_engineering.program.vocabulary import (
    CARRIERS,
    COMPILE_MODES,
    FAMILIES,
    CarrierName,
    CompileModeName,
    FamilyName,
)
from canvas_engineering.validation import check_finite_float, is_finite_number

__all__ = ["RegionProgram"]


@dataclass(frozen=True)
class RegionProgram:
    """Process semantics of one region.

    Args:
        family: ``"observation"``, ``"state"``, ``"memory"``, ``"residual"`` or ``"action"``
            (:data:`~canvas_engineering.program.FAMILIES`).
        carrier: ``"deterministic"``, ``"diffusive"``, ``"filter"``, ``"memory"`` or
            ``"residual"`` (:data:`~canvas_engineering.program.CARRIERS`); ``None``: the
            family's default.
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

    family: FamilyName = "state"
    carrier: CarrierName | None = None  # None: FAMILIES[family].carrier
    clock: Clock | None = None  # None: Clock() (every frame)
    compile_mode: CompileModeName = "runtime"
    loss_weight: float | None = None  # None: family loss scale x RegionSpec.loss_weight
    constant_value: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        require_choice("region program", "family", self.family, tuple(FAMILIES))
        if self.carrier is None:
            object.__setattr__(self, "carrier", FAMILIES[self.family].carrier)
        require_choice("region program", "carrier", self.carrier, tuple(CARRIERS))
        object.__setattr__(self, "clock", Clock.coerce(self.clock))
        require_choice("region program", "compile mode", self.compile_mode, COMPILE_MODES)
        if self.loss_weight is not None:
            loss_weight = check_finite_float(
                self.loss_weight,
                "loss_weight",
                error=ProgramValidationError,
                minimum=0,
                rule="a finite number >= 0 or None",
                sep=" ",
            )
            object.__setattr__(self, "loss_weight", loss_weight)
        value = self.constant_value
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value or not all(is_finite_number(v) for v in value):
                msg = f"constant_value {value!r} must be a number or a non-empty list of finite numbers"
                raise ProgramValidationError(msg)
            object.__setattr__(self, "constant_value", tuple(float(v) for v in value))
        elif is_finite_number(value):
            object.__setattr__(self, "constant_value", float(value))
        else:
            msg = f"constant_value {value!r} must be a finite number or a list of them"
            raise ProgramValidationError(msg)

    @classmethod
    def coerce(cls, value: RegionProgram | Mapping[str, Any] | str) -> RegionProgram:
        """Build a ``RegionProgram`` from itself, its dict, or a family name."""
        if isinstance(value, RegionProgram):
            return value
        if isinstance(value, str):
            return cls(family=value)  # type: ignore[arg-type]
        if isinstance(value, Mapping):
            return from_mapping(cls, value, "")
        msg = f"must be a RegionProgram, its dict or a family name, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        value = self.constant_value
        return {
            "family": self.family,
            "carrier": self.carrier,
            "clock": self.clock.to_dict(),
            "compile_mode": self.compile_mode,
            "loss_weight": self.loss_weight,
            "constant_value": list(value) if isinstance(value, tuple) else value,
        }
