"""How each region's data tensor becomes canvas tokens and back.

A batch is a dict keyed by region name. Each region declares a :class:`RegionFormat`:

* ``"patches"`` (video): tensor ``(B, t, C, h * p, w * p)`` for a region of ``t`` frames and
  ``h x w`` positions; each ``p x p`` patch becomes one token (einops).
* ``"vector"``: tensor ``(B, t, dim)``, one vector per region frame, spread over the region's
  ``h x w`` positions of that frame by a linear map (and read back by another).
* ``"action"``: like ``"vector"``, decoded by an :class:`~canvas_engineering.ActionHead` (MLP).

Datamodules publish ``region_formats`` so a model knows which tensor feeds which region.

Precision: the codecs run under ``torch.autocast`` and as modules converted with
``module.to(dtype)`` (Lightning's ``bf16-true``/``64-true``). Outside autocast, a tensor whose
floating dtype differs from the codec's weights (or a non-floating one) is refused on entry
with a :class:`~canvas_engineering.errors.PrecisionError` naming the region and both dtypes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from canvas_engineering.attention.attention_type import check_input_dtype
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.validation import check_choice, is_int

__all__ = ["RegionDecoder", "RegionEncoder", "RegionFormat", "expected_shape", "parse_region_formats"]


@dataclass(frozen=True)
class RegionFormat:
    """The data format of one region.

    Args:
        kind: ``"patches"``, ``"vector"`` or ``"action"``.
        channels: image channels (``"patches"``).
        patch_size: patch side in pixels (``"patches"``).
        dim: vector size per frame (``"vector"``/``"action"``).

    """

    kind: Literal["patches", "vector", "action"]
    channels: int = 0
    patch_size: int = 0
    dim: int = 0

    def __post_init__(self) -> None:
        check_choice(self.kind, "region format kind", ("patches", "vector", "action"), sep=" ")
        if self.kind == "patches" and not all(is_int(n) and n >= 1 for n in (self.channels, self.patch_size)):
            msg = (
                f"a 'patches' region needs integer channels >= 1 and patch_size >= 1, "
                f"got {self.channels!r}, {self.patch_size!r}"
            )
            raise CanvasValidationError(msg)
        if self.kind != "patches" and not (is_int(self.dim) and self.dim >= 1):
            msg = f"a {self.kind!r} region needs an integer dim >= 1, got {self.dim!r}"
            raise CanvasValidationError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict."""
        return asdict(self)


def parse_region_formats(
    formats: dict[str, RegionFormat | dict[str, Any]], layout: CanvasLayout
) -> dict[str, RegionFormat]:
    """Validate formats against a layout (every key a region of the layout)."""
    out = {}
    for name, fmt in formats.items():
        if name not in layout.regions:
            msg = f"region format for unknown region {name!r}; layout regions: {', '.join(layout.regions)}"
            raise CanvasValidationError(msg)
        try:
            out[name] = fmt if isinstance(fmt, RegionFormat) else RegionFormat(**fmt)
        except (TypeError, CanvasValidationError) as err:
            msg = f"region {name!r} format: {err}"
            raise CanvasValidationError(msg) from None
    return out


def expected_shape(fmt: RegionFormat, layout: CanvasLayout, name: str) -> tuple[int, ...]:
    """Shape of one sample of region ``name`` (without the batch dim)."""
    t, h, w = layout.region_size(name)
    if fmt.kind == "patches":
        return (t, fmt.channels, h * fmt.patch_size, w * fmt.patch_size)
    return (t, fmt.dim)


class RegionEncoder(nn.Module):
    """Data tensor of one region -> (B, n_region, d_model) tokens."""

    def __init__(self, fmt: RegionFormat, layout: CanvasLayout, name: str) -> None:
        super().__init__()
        self.fmt, self.name = fmt, name
        self.t, self.h, self.w = layout.region_size(name)
        d = layout.d_model
        if fmt.kind == "patches":
            self.proj = nn.Linear(fmt.channels * fmt.patch_size**2, d)
        else:
            self.proj = nn.Linear(fmt.dim, self.h * self.w * d)
        self.d = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *expected_shape) -> (B, t*h*w, d).

        Raises:
            PrecisionError: ``x`` is not floating point, or (outside autocast) not of the weights' dtype.

        """
        check_input_dtype(x, self, "RegionEncoder", f"region {self.name!r} data")
        if self.fmt.kind == "patches":
            p = self.fmt.patch_size
            patches = rearrange(x, "b t c (h p) (w q) -> b (t h w) (c p q)", p=p, q=p)
            return self.proj(patches)
        tokens = self.proj(x)  # (B, t, h*w*d)
        return rearrange(tokens, "b t (hw d) -> b (t hw) d", d=self.d)


class RegionDecoder(nn.Module):
    """(B, n_region, d_model) tokens -> a tensor shaped like the region's data."""

    def __init__(self, fmt: RegionFormat, layout: CanvasLayout, name: str) -> None:
        super().__init__()
        from canvas_engineering.models.action_head import ActionHead

        self.fmt, self.name = fmt, name
        self.t, self.h, self.w = layout.region_size(name)
        d = layout.d_model
        if fmt.kind == "patches":
            self.proj = nn.Linear(d, fmt.channels * fmt.patch_size**2)
        elif fmt.kind == "vector":
            self.proj = nn.Linear(self.h * self.w * d, fmt.dim)
        else:
            self.proj = ActionHead(self.h * self.w * d, action_dim=fmt.dim, pool="none")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, t*h*w, d) -> (B, *expected_shape).

        Raises:
            PrecisionError: ``tokens`` are not floating point, or (outside autocast) not of the weights' dtype.

        """
        check_input_dtype(tokens, self, "RegionDecoder", f"region {self.name!r} tokens")
        if self.fmt.kind == "patches":
            p = self.fmt.patch_size
            pix = self.proj(tokens)
            return rearrange(
                pix, "b (t h w) (c p q) -> b t c (h p) (w q)", t=self.t, h=self.h, w=self.w, p=p, q=p
            )
        per_frame = rearrange(tokens, "b (t hw) d -> b t (hw d)", t=self.t)
        return self.proj(per_frame)
