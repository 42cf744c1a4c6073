"""``RegionSpec``: what one named region of the canvas is."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from canvas_engineering.declare.attention_vocabulary import check_attention_type
from canvas_engineering.errors import RegionValidationError
from canvas_engineering.validation import check_bool, check_finite_float, check_positive_int, is_int

__all__ = ["Bounds", "RegionSpec", "validate_embedding"]

#: ``(t0, t1, h0, h1, w0, w1)``: half-open extent on the (T, H, W) grid.
Bounds = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class RegionSpec:
    """Per-region semantics: extent, temporal frequency, loss role and modality type.

    Args:
        bounds: ``(t0, t1, h0, h1, w0, w1)`` half-open extent on the grid.
        period: real frames per canvas frame of this region; a region with period 4
            whose canvas frames are 0..3 stands for real frames 0, 4, 8, 12.
        is_output: whether the region takes part in the diffusion loss.
        loss_weight: relative loss weight of its positions (finite, >= 0).
        semantic_type: human-readable modality description.
        semantic_embedding: frozen embedding of ``semantic_type`` (finite 1-D vector).
        embedding_model: identifier of the model that produced the embedding.
        default_attn: attention type of connections whose source is this region and
            that do not name ``fn`` themselves (``None``: the global default).

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
            if hi <= lo:
                msg = (
                    f"bounds {_fmt(self.bounds)}: {axis}1={hi} must be greater than {axis}0={lo} "
                    "(empty or reversed extent)"
                )
                raise RegionValidationError(msg)
        check_positive_int(self.period, "period", error=RegionValidationError, sep=" ")
        check_bool(self.is_output, "is_output", error=RegionValidationError, sep=" ")
        weight = check_finite_float(self.loss_weight, "loss_weight", error=RegionValidationError, minimum=0, sep=" ")
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
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            msg = f"semantic_embedding must be a 1-D vector of numbers; element {i} is {x!r}"
            raise RegionValidationError(msg)
        if not math.isfinite(x):
            msg = f"semantic_embedding element {i} is {x!r}; every element must be finite"
            raise RegionValidationError(msg)
        out.append(float(x))
    return tuple(out)
