"""``CanvasLayout``: the (T, H, W) grid, its named regions and their frame maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from canvas_engineering.declare.region import MAX_POSITIONS, RegionSpec
from canvas_engineering.errors import LayoutValidationError, RegionValidationError, UnknownRegionError
from canvas_engineering.validation import check_int, check_name

__all__ = ["MAX_D_MODEL", "MAX_POSITIONS", "CanvasLayout"]

#: Largest token width ``d_model`` (65,536: well above any transformer's width; a canvas
#: buffer holds ``N * d_model`` numbers, see ``SpatiotemporalCanvas``).
MAX_D_MODEL = 2**16


def _fmt(bounds: Sequence[int]) -> str:
    return "(" + ",".join(str(b) for b in bounds) + ")"


@dataclass(frozen=True, eq=False)
class CanvasLayout:
    """Declarative canvas geometry: a (T, H, W) grid of ``d_model`` tokens and named regions.

    Positions are flattened as ``t * H * W + h * W + w``. Raw bound tuples in ``regions``
    are wrapped as ``RegionSpec(bounds=...)``. A region with period ``p`` whose first canvas
    frame is ``t0`` stands for real frames ``t0, t0 + p, t0 + 2p, ...``; these may reach beyond
    ``T`` (a slow region covers more real time than the canvas has frames, as in the published
    package), and :attr:`real_horizon` is one past the last real frame of any region.

    Args:
        T: canvas frames.
        H: grid height.
        W: grid width.
        d_model: token width.
        regions: name -> ``RegionSpec`` or ``(t0, t1, h0, h1, w0, w1)``.
        t_current: first "future" frame; positions at ``t >= t_current`` are outputs.

    Size limits (checked here, before anything is allocated): ``T``, ``H`` and ``W`` are
    integers in ``[1, MAX_POSITIONS]`` and ``T * H * W <= MAX_POSITIONS`` (``2**24`` =
    16,777,216 positions); ``d_model`` is an integer in ``[1, MAX_D_MODEL]`` (``2**16``).
    NumPy integers are accepted and stored as ``int``.

    Raises:
        LayoutValidationError: bad grid sizes (beyond the limits included), overlapping
            regions, t_current outside [0, T].
        RegionValidationError: a region breaks a rule; the message names the region.

    Example::

        >>> layout = CanvasLayout(T=5, H=8, W=8, d_model=256,
        ...     regions={"visual": (0, 5, 0, 6, 0, 6), "action": (0, 5, 6, 7, 0, 1)}, t_current=2)
        >>> layout.num_positions, layout.region_numel("visual")
        (320, 180)

    """

    T: int
    H: int
    W: int
    d_model: int
    regions: dict[str, RegionSpec] = field(default_factory=dict)
    t_current: int = 0

    def __post_init__(self) -> None:
        limits = {"T": "MAX_POSITIONS=2**24", "H": "MAX_POSITIONS=2**24", "W": "MAX_POSITIONS=2**24"}
        for name in ("T", "H", "W", "d_model"):
            value = check_int(
                getattr(self, name),
                f"CanvasLayout.{name}",
                error=LayoutValidationError,
                minimum=1,
                maximum=MAX_D_MODEL if name == "d_model" else MAX_POSITIONS,
                rule=f"an integer >= 1 and <= {limits.get(name, 'MAX_D_MODEL=2**16')}",
            )
            object.__setattr__(self, name, value)
        if self.T * self.H * self.W > MAX_POSITIONS:
            msg = (
                f"CanvasLayout T={self.T} H={self.H} W={self.W} has {self.T * self.H * self.W:,} positions; "
                f"a canvas holds at most MAX_POSITIONS={MAX_POSITIONS:,} (2**24)"
            )
            raise LayoutValidationError(msg)
        if not isinstance(self.regions, Mapping):
            msg = (
                "CanvasLayout.regions must be a mapping of name -> RegionSpec or bounds, "
                f"got {type(self.regions).__name__}"
            )
            raise LayoutValidationError(msg)
        specs: dict[str, RegionSpec] = {}
        for name, value in self.regions.items():
            check_name(name, "region name", error=RegionValidationError, sep=" ")
            try:
                spec = RegionSpec.coerce(value)
            except RegionValidationError as err:
                msg = f"region {name!r}: {err}"
                raise RegionValidationError(msg) from None
            self._check_in_grid(name, spec)
            specs[name] = spec
        object.__setattr__(self, "regions", specs)
        self._check_overlaps()
        t_current = check_int(
            self.t_current,
            "CanvasLayout.t_current",
            error=LayoutValidationError,
            minimum=0,
            maximum=self.T,
            rule=f"an integer in [0, T={self.T}]",
        )
        object.__setattr__(self, "t_current", t_current)

    def _key(self) -> tuple:
        # Region order is part of identity: it fixes region ids (and so class ids).
        return (self.T, self.H, self.W, self.d_model, self.t_current, tuple(self.regions.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CanvasLayout) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # -- validation ------------------------------------------------------------------

    def _check_in_grid(self, name: str, spec: RegionSpec) -> None:
        limits = (self.T, self.H, self.W)
        for axis, hi, limit in zip("thw", spec.bounds[1::2], limits, strict=True):
            if hi > limit:
                msg = (
                    f"region {name!r} bounds {_fmt(spec.bounds)} lie outside the grid: "
                    f"{axis}1={hi} > {axis.upper()}={limit}"
                )
                raise RegionValidationError(msg)
        # Real frames may pass T (slow regions), but stay below MAX_POSITIONS: real times are
        # encoded in float32 (exact up to 2**24) and bound the compiler's reference frames.
        last_real = spec.bounds[0] + (spec.num_frames - 1) * spec.period
        if last_real >= MAX_POSITIONS:
            msg = (
                f"region {name!r} with period {spec.period} over {spec.num_frames} canvas frames reaches "
                f"real frame {last_real:,}; real frames must stay below MAX_POSITIONS={MAX_POSITIONS:,} (2**24)"
            )
            raise RegionValidationError(msg)

    def _check_overlaps(self) -> None:
        if len(self.regions) < 2:
            return
        names = list(self.regions)
        boxes = torch.tensor([spec.bounds for spec in self.regions.values()])  # (R, 6)
        lo, hi = boxes[:, 0::2], boxes[:, 1::2]  # (R, 3) each
        # Two half-open boxes intersect iff they intersect on every axis.
        inter = (torch.maximum(lo[:, None], lo[None]) < torch.minimum(hi[:, None], hi[None])).all(-1)
        inter &= torch.ones_like(inter).triu(1)
        if inter.any():
            i, j = (int(v) for v in inter.nonzero()[0])
            a, b = names[i], names[j]
            msg = (
                f"region {b!r} bounds {_fmt(self.regions[b].bounds)} "
                f"overlap region {a!r} bounds {_fmt(self.regions[a].bounds)}"
            )
            raise LayoutValidationError(msg)

    # -- regions ---------------------------------------------------------------------

    @property
    def num_positions(self) -> int:
        """Total number of canvas positions, ``T * H * W``."""
        return self.T * self.H * self.W

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """``(H, W)``: the grid's spatial axes (the published name)."""
        return (self.H, self.W)

    @property
    def n_spatial_dims(self) -> int:
        """Number of spatial axes: always 2 (``H`` and ``W``)."""
        return 2

    @property
    def spatial_volume(self) -> int:
        """Positions per canvas frame, ``H * W``."""
        return self.H * self.W

    def flat_index(self, t: int | torch.Tensor, *spatial_coords: int | torch.Tensor) -> int | torch.Tensor:
        """Flat position ``t * H * W + h * W + w`` of ``(t, h, w)``; omitted spatial coordinates count as 0.

        Integers give an ``int``; tensors (broadcast together) give a LongTensor of indices.

        Raises:
            LayoutValidationError: more than two spatial coordinates, a non-integer coordinate, or one
                outside the grid (the message names the axis and its range).

        """
        if len(spatial_coords) > 2:
            msg = f"CanvasLayout.flat_index: got {len(spatial_coords)} spatial coordinates; the grid has 2 (h, w)"
            raise LayoutValidationError(msg)
        coords: list[int | torch.Tensor] = [t, *spatial_coords, 0, 0][:3]
        for i, (axis, value, limit) in enumerate(zip("thw", coords, (self.T, self.H, self.W), strict=True)):
            if isinstance(value, torch.Tensor):
                if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                    msg = f"CanvasLayout.flat_index: {axis} must be an integer tensor, got dtype {value.dtype}"
                    raise LayoutValidationError(msg)
                outside = (value < 0) | (value >= limit)
                if bool(outside.any()):
                    msg = (
                        f"CanvasLayout.flat_index: {axis}={int(value[outside][0])} lies outside "
                        f"[0, {axis.upper()}={limit})"
                    )
                    raise LayoutValidationError(msg)
            else:
                coords[i] = check_int(
                    value,
                    f"CanvasLayout.flat_index: {axis}",
                    error=LayoutValidationError,
                    minimum=0,
                    maximum=limit - 1,
                    rule=f"an integer in [0, {axis.upper()}={limit})",
                )
        t, h, w = coords
        return t * (self.H * self.W) + h * self.W + w

    def region_timesteps(self, name: str) -> list[int]:
        """Canvas frames ``t0 .. t1 - 1`` that a region spans."""
        t0, t1 = self.region_spec(name).bounds[:2]
        return list(range(t0, t1))

    def region_indices_at_t(self, name: str, t_abs: int) -> torch.Tensor:
        """Flat indices of a region's positions at canvas frame ``t_abs`` ((h, w)-major LongTensor).

        Empty when ``t_abs`` is not one of the region's canvas frames.
        """
        spec = self.region_spec(name)
        check_int(t_abs, f"region {name!r}: t_abs", error=LayoutValidationError, rule="an integer")
        t0, t1 = spec.bounds[:2]
        if not t0 <= t_abs < t1:
            return torch.empty(0, dtype=torch.long)
        per_frame = spec.size // spec.num_frames
        k = t_abs - t0
        return self._region_index_cache[name][k * per_frame : (k + 1) * per_frame].clone()

    @property
    def region_names(self) -> tuple[str, ...]:
        """Region names in declaration order (their region ids)."""
        return tuple(self.regions)

    def region_spec(self, name: str) -> RegionSpec:
        """Return the ``RegionSpec`` of a region (raw tuples are already wrapped)."""
        try:
            return self.regions[name]
        except KeyError:
            msg = f"unknown region {name!r}; layout regions: {', '.join(self.regions) or '(none)'}"
            raise UnknownRegionError(msg) from None

    def region_size(self, name: str) -> tuple[int, int, int]:
        """``(frames, height, width)`` of a region."""
        return self.region_spec(name).shape

    def region_numel(self, name: str) -> int:
        """Return the number of positions of a region."""
        return self.region_spec(name).size

    def region_indices(self, name: str) -> torch.Tensor:
        """Flat indices ``t*H*W + h*W + w`` of a region's positions, (t, h, w)-major, as a LongTensor."""
        self.region_spec(name)  # raises UnknownRegionError naming the region
        return self._region_index_cache[name].clone()  # callers may modify their copy

    @cached_property
    def _region_index_cache(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, spec in self.regions.items():
            t0, t1, h0, h1, w0, w1 = spec.bounds
            t = torch.arange(t0, t1)[:, None, None] * (self.H * self.W)
            h = torch.arange(h0, h1)[None, :, None] * self.W
            w = torch.arange(w0, w1)[None, None, :]
            out[name] = (t + h + w).reshape(-1)
        return out

    # -- per-position vectors -------------------------------------------------------

    @cached_property
    def position_region_ids(self) -> torch.Tensor:
        """(N,) region id of each position (declaration order); ``len(regions)`` where unassigned."""
        grid = torch.full((self.T, self.H, self.W), len(self.regions), dtype=torch.long)
        for i, spec in enumerate(self.regions.values()):
            t0, t1, h0, h1, w0, w1 = spec.bounds
            grid[t0:t1, h0:h1, w0:w1] = i
        return grid.reshape(-1)

    @cached_property
    def position_frames(self) -> torch.Tensor:
        """(N,) canvas frame ``t`` of each position."""
        return torch.arange(self.T).repeat_interleave(self.H * self.W)

    @cached_property
    def frame_real_times(self) -> torch.Tensor:
        """(R + 1, T) real frame of each (region, canvas frame); -1 where the region has no frame.

        The last row stands for unassigned positions.
        """
        table = torch.full((len(self.regions) + 1, self.T), -1, dtype=torch.long)
        for i, spec in enumerate(self.regions.values()):
            t0, t1 = spec.bounds[:2]
            table[i, t0:t1] = t0 + torch.arange(t1 - t0) * spec.period
        return table

    @cached_property
    def real_horizon(self) -> int:
        """One past the latest real frame of the canvas: ``max(T, t0 + (frames - 1) * period + 1)`` over regions.

        Reference frames of temporal connections range over ``[0, real_horizon)``; it is ``T``
        unless a slow region's real frames reach beyond the canvas's frames.
        """
        last = [spec.bounds[0] + (spec.num_frames - 1) * spec.period + 1 for spec in self.regions.values()]
        return max([self.T, *last])

    def output_mask(self) -> torch.Tensor:
        """(N,) bool: positions at ``t >= t_current`` (the diffusion outputs).

        ``t`` is the position's real frame, which is its canvas frame for period-1 regions and
        unassigned positions; a slow region's frame counts from the real time it stands for.
        """
        real = self.frame_real_times[self.position_region_ids, self.position_frames]
        return torch.where(real >= 0, real, self.position_frames) >= self.t_current

    def loss_weight_mask(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """(N,) float loss weight per position: ``loss_weight`` in output regions, 0 elsewhere."""
        per_region = torch.tensor(
            [spec.loss_weight if spec.is_output else 0.0 for spec in self.regions.values()] + [0.0]
        )
        return per_region[self.position_region_ids].to(device)

    # -- frame maps ------------------------------------------------------------------

    def real_frame(self, name: str, canvas_t: int) -> int:
        """Real frame of a region's ``canvas_t``-th frame (counted from the region's start).

        ``real = t0 + canvas_t * period``; e.g. ``real_frame("thought", canvas_t=2) == 8`` for a
        period-4 region starting at frame 0.

        Raises:
            LayoutValidationError: if ``canvas_t`` is not one of the region's frames.

        """
        spec = self.region_spec(name)
        check_int(
            canvas_t,
            f"region {name!r}: canvas_t",
            error=LayoutValidationError,
            minimum=0,
            maximum=spec.num_frames - 1,
            rule=f"an integer in [0, {spec.num_frames})",
        )
        return spec.bounds[0] + canvas_t * spec.period

    def canvas_frame(self, name: str, real_t: int) -> int | None:
        """Return the region's frame index (from its start) holding real frame ``real_t``, or ``None``.

        ``None`` when ``real_t`` falls between the region's frames or outside them.
        """
        spec = self.region_spec(name)
        k, rem = divmod(real_t - spec.bounds[0], spec.period)
        if rem != 0 or not 0 <= k < spec.num_frames:
            return None
        return k

    # -- presentation -----------------------------------------------------------------

    def summary(self) -> str:
        """Return a readable table of the grid and its regions."""
        n = self.num_positions
        lines = [
            f"CanvasLayout T={self.T} H={self.H} W={self.W} d_model={self.d_model} "
            f"t_current={self.t_current}: {n:,} positions",
            f"  {'region':<16}{'bounds':<22}{'positions':>10}{'share':>8}{'period':>8}{'output':>8}{'weight':>8}  attn",
        ]
        assigned = 0
        for name, spec in self.regions.items():
            assigned += spec.size
            lines.append(
                f"  {name:<16}{_fmt(spec.bounds):<22}{spec.size:>10,}{spec.size / n:>8.1%}{spec.period:>8}"
                f"{'yes' if spec.is_output else 'no':>8}{spec.loss_weight:>8.2f}  {spec.default_attn or '-'}"
            )
        lines.append(f"  {'(unassigned)':<16}{'':<22}{n - assigned:>10,}{(n - assigned) / n:>8.1%}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "T": self.T,
            "H": self.H,
            "W": self.W,
            "d_model": self.d_model,
            "t_current": self.t_current,
            "regions": {name: spec.to_dict() for name, spec in self.regions.items()},
        }
