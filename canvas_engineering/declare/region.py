"""``RegionSpec``: what one named region of the canvas is."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from canvas_engineering.declare.attention_vocabulary import check_attention_type
from canvas_engineering.errors import RegionValidationError
from canvas_engineering.validation import check_bool, check_finite_float, check_positive_int, is_finite_number, is_int

__all__ = ["MAX_LOSS_WEIGHT", "MAX_POSITIONS", "Bounds", "RegionSpec", "validate_embedding"]

#: ``(t0, t1, h0, h1, w0, w1)``: half-open extent on the (T, H, W) grid.
Bounds = tuple[int, int, int, int, int, int]

#: Largest canvas: at most ``2**24`` (16,777,216) positions per canvas, so every grid size
#: and region bound is at most this too. Below it, positions and per-class position counts
#: are exact in float32 (the compiler's class histograms and the position encodings use
#: float32), and a canvas can actually be allocated; far larger grids used to be accepted
#: and fail later inside the allocator or in C++. Checked by :class:`RegionSpec` (bounds)
#: and :class:`~canvas_engineering.declare.layout.CanvasLayout` (grid and product).
MAX_POSITIONS = 2**24

#: Largest region ``loss_weight``: per-position losses are multiplied by it in float32 (and
#: bfloat16 under autocast); a larger weight pushes the weighted loss towards overflow.
MAX_LOSS_WEIGHT = 1e6


@dataclass(frozen=True)
class RegionSpec:
    """Per-region semantics: extent, temporal frequency, loss role and modality type.

    Args:
        bounds: ``(t0, t1, h0, h1, w0, w1)`` half-open extent on the grid.
        period: real frames per canvas frame of this region; a region with period 4
            whose canvas frames are 0..3 stands for real frames 0, 4, 8, 12.
        is_output: whether the region takes part in the diffusion loss.
        loss_weight: relative loss weight of its positions (finite, in ``[0, MAX_LOSS_WEIGHT]``).
        semantic_type: human-readable modality description.
        semantic_embedding: frozen embedding of ``semantic_type`` (finite 1-D vector).
        embedding_model: identifier of the model that produced the embedding.
        default_attn: attention type of connections whose source is this region and
            that do not name ``fn`` themselves (``None``: the global default).

    Every bound is an integer in ``[0, MAX_POSITIONS]`` (NumPy integers are accepted and
    stored as ``int``).

    Raises:
        RegionValidationError: when a field breaks its rule; the message names the
            field and the value (the layout adds the region name).

    """

    bounds: Bounds
    period: int = 1
    is_output: bool = True
    loss_weight: float = 1.0
    semantic_type: str | None = None
    semantic_embedding: tuple[float, ...] | None = None
    embedding_model: str | None = None
    default_attn: str | None = None

    def __post_init__(self) -> None:
        bounds = self.bounds
        if not isinstance(bounds, Sequence) or len(bounds) != 6 or not all(is_int(b) for b in bounds):
            msg = f"bounds {bounds!r} must be six integers (t0, t1, h0, h1, w0, w1)"
            raise RegionValidationError(msg)
        object.__setattr__(self, "bounds", tuple(int(b) for b in bounds))
        for axis, (lo, hi) in zip("thw", zip(self.bounds[0::2], self.bounds[1::2], strict=True), strict=True):
            if lo < 0:
                msg = f"bounds {_fmt(self.bounds)}: {axis}0={lo} is negative"
                raise RegionValidationError(msg)
            if hi > MAX_POSITIONS:
                msg = (
                    f"bounds {_fmt(self.bounds)}: {axis}1={hi} exceeds the canvas size limit "
                    f"MAX_POSITIONS={MAX_POSITIONS} (2**24)"
                )
                raise RegionValidationError(msg)
            if hi <= lo:
                msg = (
                    f"bounds {_fmt(self.bounds)}: {axis}1={hi} must be greater than {axis}0={lo} "
                    "(empty or reversed extent)"
                )
                raise RegionValidationError(msg)
        period = check_positive_int(self.period, "period", error=RegionValidationError, sep=" ")
        object.__setattr__(self, "period", period)
        is_output = check_bool(self.is_output, "is_output", error=RegionValidationError, sep=" ")
        object.__setattr__(self, "is_output", is_output)
        weight = check_finite_float(
            self.loss_weight,
            "loss_weight",
            error=RegionValidationError,
            minimum=0,
            maximum=MAX_LOSS_WEIGHT,
            rule=f"a finite number >= 0 and <= MAX_LOSS_WEIGHT={MAX_LOSS_WEIGHT:g}",
            sep=" ",
        )
        object.__setattr__(self, "loss_weight", weight)
        if self.semantic_embedding is not None:
            object.__setattr__(self, "semantic_embedding", validate_embedding(self.semantic_embedding))
        if self.default_attn is not None:
            check_attention_type(self.default_attn, "default_attn")

    @property
    def num_frames(self) -> int:
        """Number of canvas frames the region spans."""
        return self.bounds[1] - self.bounds[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, height, width)`` of the region."""
        t0, t1, h0, h1, w0, w1 = self.bounds
        return (t1 - t0, h1 - h0, w1 - w0)

    @property
    def size(self) -> int:
        """Number of canvas positions in the region."""
        t, h, w = self.shape
        return t * h * w

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["bounds"] = list(self.bounds)
        if self.semantic_embedding is not None:
            out["semantic_embedding"] = list(self.semantic_embedding)
        return out

    @classmethod
    def coerce(cls, value: RegionSpec | Sequence[int]) -> RegionSpec:
        """Wrap a raw ``bounds`` tuple as ``RegionSpec(bounds=value)``; pass specs through."""
        if isinstance(value, RegionSpec):
            return value
        return cls(bounds=value)  # type: ignore[arg-type]


def _fmt(bounds: Sequence[int]) -> str:
    return "(" + ",".join(str(b) for b in bounds) + ")"


def validate_embedding(value: object) -> tuple[float, ...]:
    """Validate a semantic embedding (sequence, numpy array or tensor) as a finite 1-D tuple."""
    if hasattr(value, "tolist"):  # torch.Tensor / numpy.ndarray
        value = value.tolist()  # type: ignore[union-attr]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        msg = f"semantic_embedding must be a 1-D vector of numbers, got {type(value).__name__}"
        raise RegionValidationError(msg)
    if len(value) == 0:
        msg = "semantic_embedding must not be empty"
        raise RegionValidationError(msg)
    out = []
    for i, x in enumerate(value):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):  # NumPy scalars are numbers
            msg = f"semantic_embedding must be a 1-D vector of numbers; element {i} is {x!r}"
            raise RegionValidationError(msg)
        if not is_finite_number(x):
            msg = f"semantic_embedding element {i} is {x!r}; every element must be finite"
            raise RegionValidationError(msg)
        out.append(float(x))
    return tuple(out)
