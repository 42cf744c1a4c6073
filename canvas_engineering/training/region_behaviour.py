"""What a :class:`~canvas_engineering.CanvasModule` does with each region, chosen once from its program.

Every region of the layout gets a :class:`RegionBehaviour`: its carrier, clock and compile
mode as objects, and its effective loss weight. A model built without a program uses the
default program (``CanvasProgram(schema)``: every region diffusive, updating at every frame,
``runtime``, loss weight from the layout), which is exactly the plain schema semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

from canvas_engineering.program import CanvasProgram
from canvas_engineering.training.carriers import Carrier, carrier_for
from canvas_engineering.training.clocks import RegionClock, region_clock
from canvas_engineering.training.compile_modes import CompileMode, compile_mode_for

__all__ = ["RegionBehaviour", "region_behaviours"]


@dataclass(frozen=True)
class RegionBehaviour:
    """The run-time objects of one region.

    Args:
        name: the region.
        carrier: how its predicted frames are produced.
        clock: which of its frames update.
        compile_mode: whether it learns, is folded out, or is returned.
        loss_weight: its effective loss weight (:meth:`CanvasProgram.loss_weight`).
        is_output: the layout marks it as an output region.
        watches: the region whose batch tensor its clock reads (``None``: none).

    """

    name: str
    carrier: Carrier
    clock: RegionClock
    compile_mode: CompileMode
    loss_weight: float
    is_output: bool
    watches: str | None

    @property
    def may_be_predicted(self) -> bool:
        """Whether its future frames are predicted (an output, or a carrier that predicts inputs, with weight)."""
        return (self.is_output or self.carrier.predicts_inputs) and self.loss_weight > 0

    @property
    def runs_per_frame(self) -> bool:
        """Whether its decoded frames need the per-frame pass (residual carrier or a holding clock)."""
        return self.carrier.adds_previous or self.clock.holds


def region_behaviours(program: CanvasProgram) -> dict[str, RegionBehaviour]:
    """Return every layout region's behaviour under ``program``, in layout order."""
    layout = program.schema.layout
    out = {}
    for name, rp in program.regions.items():
        out[name] = RegionBehaviour(
            name=name,
            carrier=carrier_for(rp.carrier),
            clock=region_clock(program, name),
            compile_mode=compile_mode_for(rp.compile_mode),
            loss_weight=program.loss_weight(name),
            is_output=layout.region_spec(name).is_output,
            watches=rp.clock.watched_region(name),
        )
    return out
