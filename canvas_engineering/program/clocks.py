"""``Clock``: at which of its frames a region updates.

A clock is declared by its ``kind`` and parameters (a frozen dataclass, JSON-ready); each
kind's firing rule is a small object (:class:`PeriodicFiring`, :class:`BoundaryFiring`,
:class:`EventFiring`) looked up once by name, so nothing branches on the kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

from canvas_engineering.errors import ProgramValidationError
from canvas_engineering.program._checks import from_mapping, require_choice
from canvas_engineering.validation import check_finite_float, check_int, check_non_negative_int, check_positive_int

if TYPE_CHECKING:
    import torch

__all__ = ["CLOCK_KINDS", "BoundaryFiring", "Clock", "ClockKind", "EventFiring", "FiringRule", "PeriodicFiring"]

#: The kinds of clock.
ClockKind = Literal["periodic", "on_event", "boundary"]
#: Which end(s) of the window a boundary clock fires at.
Boundary = Literal["start", "end", "both"]


@dataclass(frozen=True)
class Clock:
    """When a region updates. Frames are the region's own canvas frames ``k = 0 .. t-1``.

    They stand at real times ``t0 + k * period_of_region``.

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
        require_choice("clock", "kind", self.kind, CLOCK_KINDS)
        error, sep = ProgramValidationError, " "
        check_positive_int(self.period, "clock period", error=error, sep=sep)
        phase_rule = f"an integer in [0, period={self.period})"
        check_int(self.phase, "clock phase", error=error, minimum=0, maximum=self.period - 1, rule=phase_rule, sep=sep)
        threshold = check_finite_float(self.threshold, "clock threshold", error=error, minimum=0, sep=sep)
        object.__setattr__(self, "threshold", threshold)
        check_non_negative_int(self.cooldown, "clock cooldown", error=error, sep=sep)
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            msg = f"clock source {self.source!r} must be a region name or None"
            raise ProgramValidationError(msg)
        require_choice("clock", "boundary", self.boundary, get_args(Boundary))

    @classmethod
    def coerce(cls, value: Clock | Mapping[str, Any] | None) -> Clock:
        """Build a ``Clock`` from itself, its dict (``to_dict``) or ``None`` (every frame)."""
        if value is None:
            return cls()
        if isinstance(value, Clock):
            return value
        if isinstance(value, Mapping):
            return from_mapping(cls, value, f"clock {dict(value)!r}: ")
        msg = f"clock must be a Clock, a dict or None, got {type(value).__name__}"
        raise ProgramValidationError(msg)

    @property
    def rule(self) -> FiringRule:
        """Return the firing rule of this clock's kind."""
        return FIRING_RULES[self.kind]

    @property
    def every_frame(self) -> bool:
        """Whether it updates at every frame (periodic with period 1)."""
        return self.rule.every_frame(self)

    def watched_region(self, own: str) -> str | None:
        """Return the region whose batch tensor decides the firing (``None``: the batch is not needed)."""
        return (self.source or own) if self.rule.watches_data else None

    def describe(self) -> str:
        """Say in a few words when it fires (``"every frame"``, ``"every 2 (phase 1)"``, ...)."""
        return self.rule.describe(self)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
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
        self,
        real_times: torch.Tensor,
        batch_size: int,
        watched: torch.Tensor | None = None,
        watched_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, t) bool: which of the region's frames update, per sample.

        Args:
            real_times: (t,) real time of each of the region's frames.
            batch_size: B.
            watched: (B, t_w, ...) the batch tensor of the watched region (``on_event`` only).
            watched_times: (t_w,) real time of each watched frame (``on_event`` only).

        Raises:
            ProgramValidationError: an ``on_event`` clock without the watched tensor.

        """
        return self.rule.fires(self, real_times, batch_size, watched, watched_times)


# -- firing rules, one per kind ----------------------------------------------------------------


class FiringRule(ABC):
    """How one kind of clock decides which frames fire (stateless; the clock holds the parameters)."""

    #: whether the rule reads a region's batch tensor
    watches_data: bool = False

    def every_frame(self, clock: Clock) -> bool:
        """Whether ``clock`` fires at every frame whatever the data."""
        return False

    def describe(self, clock: Clock) -> str:
        """Say in a few words when ``clock`` fires."""
        return clock.kind

    @abstractmethod
    def fires(
        self,
        clock: Clock,
        real_times: torch.Tensor,
        batch_size: int,
        watched: torch.Tensor | None,
        watched_times: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, t) bool: the frames where ``clock`` fires (see :meth:`Clock.update_mask`)."""


class PeriodicFiring(FiringRule):
    """Fires at real times ``r`` with ``(r - phase) % period == 0``."""

    def every_frame(self, clock: Clock) -> bool:  # noqa: D102
        return clock.period == 1

    def describe(self, clock: Clock) -> str:  # noqa: D102
        return "every frame" if clock.period == 1 else f"every {clock.period} (phase {clock.phase})"

    def fires(  # noqa: D102
        self,
        clock: Clock,
        real_times: torch.Tensor,
        batch_size: int,
        watched: torch.Tensor | None,
        watched_times: torch.Tensor | None,
    ) -> torch.Tensor:
        import torch

        fires = torch.remainder(real_times - clock.phase, clock.period) == 0
        return fires[None].expand(batch_size, real_times.numel())


class BoundaryFiring(FiringRule):
    """Fires at the region's first frame, last frame, or both."""

    def fires(  # noqa: D102
        self,
        clock: Clock,
        real_times: torch.Tensor,
        batch_size: int,
        watched: torch.Tensor | None,
        watched_times: torch.Tensor | None,
    ) -> torch.Tensor:
        import torch

        t = real_times.numel()
        k = torch.arange(t, device=real_times.device)
        fires = torch.zeros(t, dtype=torch.bool, device=real_times.device)
        if clock.boundary in ("start", "both"):
            fires |= k == 0
        if clock.boundary in ("end", "both"):
            fires |= k == t - 1
        return fires[None].expand(batch_size, t)


class EventFiring(FiringRule):
    """Fires where the watched region changed by more than ``threshold``, then waits ``cooldown`` frames."""

    watches_data = True

    def fires(  # noqa: D102
        self,
        clock: Clock,
        real_times: torch.Tensor,
        batch_size: int,
        watched: torch.Tensor | None,
        watched_times: torch.Tensor | None,
    ) -> torch.Tensor:
        import torch

        if watched is None or watched_times is None:
            msg = "an on_event clock needs the watched region's batch tensor"
            raise ProgramValidationError(msg)
        x = watched.float()
        change = (x[:, 1:] - x[:, :-1]).abs().flatten(2).mean(-1)  # (B, t_w - 1), at watched frames 1..
        events = change > clock.threshold
        at = watched_times[1:].to(real_times.device)  # (t_w - 1,)
        lower = torch.cat([real_times.new_full((1,), -1 << 62), real_times[:-1]])  # (t,)
        window = (at[None, :] > lower[:, None]) & (at[None, :] <= real_times[:, None])  # (t, t_w - 1)
        raw = (events.to(real_times.device)[:, None, :] & window[None]).any(-1)  # (B, t)
        if clock.cooldown == 0:
            return raw
        fires = torch.zeros_like(raw)
        last = torch.full((raw.shape[0],), -(clock.cooldown + 1), dtype=torch.long, device=raw.device)
        for k in range(real_times.numel()):  # a loop over frames, vectorised over the batch
            fires[:, k] = raw[:, k] & (k - last > clock.cooldown)
            last = torch.where(fires[:, k], torch.full_like(last, k), last)
        return fires


#: Clock kind -> its firing rule.
FIRING_RULES: MappingProxyType[str, FiringRule] = MappingProxyType(
    {"periodic": PeriodicFiring(), "on_event": EventFiring(), "boundary": BoundaryFiring()}
)

#: The clock kinds, in declaration order.
CLOCK_KINDS: tuple[str, ...] = get_args(ClockKind)
