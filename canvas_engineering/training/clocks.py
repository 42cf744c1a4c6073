"""Region clocks bound to a model: which of a region's frames update, for a batch.

A program's :class:`~canvas_engineering.Clock` is turned into one of these once, when a
:class:`~canvas_engineering.CanvasModule` is built (:func:`region_clock`): a region that
updates at every frame gets :class:`EveryFrameClock` (nothing is held), any other clock
:class:`ProgramClock` (its prediction is held where the clock does not fire, and those
frames take no loss).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from canvas_engineering.program import CanvasProgram

__all__ = ["EveryFrameClock", "ProgramClock", "RegionClock", "region_clock"]


class RegionClock:
    """Which frames of one region update, per sample of a batch."""

    #: whether some frames may not update (then predictions are held there and take no loss)
    holds: bool = False

    def __init__(self, name: str, frames: int) -> None:
        self.name, self.frames = name, int(frames)

    def update_mask(self, batch: Mapping[str, torch.Tensor], batch_size: int, device: torch.device) -> torch.Tensor:
        """Return ``(B, t)`` bool: the region's frames that update for each sample of ``batch``."""
        return torch.ones(batch_size, self.frames, dtype=torch.bool, device=device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class EveryFrameClock(RegionClock):
    """The region updates at every frame (no program clock, or a periodic clock of period 1)."""


class ProgramClock(RegionClock):
    """The region updates where its program clock fires (periodic, boundary or on-event)."""

    holds = True

    def __init__(self, program: CanvasProgram, name: str, frames: int) -> None:
        super().__init__(name, frames)
        self.program = program

    def update_mask(  # noqa: D102
        self, batch: Mapping[str, torch.Tensor], batch_size: int, device: torch.device
    ) -> torch.Tensor:
        return self.program.update_mask(self.name, batch, batch_size).to(device)


def region_clock(program: CanvasProgram, name: str) -> RegionClock:
    """Return the clock object of region ``name`` under ``program``."""
    frames = program.schema.layout.region_size(name)[0]
    if program.regions[name].clock.every_frame:
        return EveryFrameClock(name, frames)
    return ProgramClock(program, name, frames)
