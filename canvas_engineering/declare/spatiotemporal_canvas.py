"""``SpatiotemporalCanvas``: the canvas tensor and its position/region encodings.

A canvas batch is a ``(B, N, d_model)`` tensor of *content*. ``place`` writes a region's
tokens into it and ``extract`` reads them back, so ``extract(place(c, x, r), r)`` is exactly
``x``. The encodings that tell the model what each position is (its real time, row,
column, region and period) are a function of the position, not of the content: ``encode``
adds them to a whole canvas, so every placed token keeps its position's and region's
encodings wherever it is placed.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.validation import check_int

__all__ = ["MAX_ENCODING_ELEMENTS", "SpatiotemporalCanvas", "sinusoidal_encoding"]

#: Most numbers the ``(N, d_model)`` position encoding may hold: ``2**31`` (8 GiB of float32).
#: The layout bounds ``N`` and ``d_model`` separately (``MAX_POSITIONS``, ``MAX_D_MODEL``);
#: their product is checked here, before the buffer is allocated.
MAX_ENCODING_ELEMENTS = 2**31


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(len(positions), dim) sine/cosine encoding of (possibly fractional) positions."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = torch.exp(-math.log(10000.0) * steps / max(half, 1))
    angles = positions.float()[:, None] * freqs[None, :]  # (N, half)
    enc = torch.cat([angles.sin(), angles.cos()], dim=1)
    return nn.functional.pad(enc, (0, dim - 2 * half))


class SpatiotemporalCanvas(nn.Module):
    """Canvas tensor operations for a :class:`CanvasLayout`.

    Args:
        layout: the layout to place regions on.

    Raises:
        CanvasValidationError: ``layout`` is not a :class:`CanvasLayout`, or ``N * d_model``
            exceeds :data:`MAX_ENCODING_ELEMENTS` (the message gives both sizes).

    Attributes:
        position_encoding: (N, d_model) fixed buffer encoding each position's real time,
            row, column and period (so slow regions are told apart from fast ones).
        region_embedding: (R + 1, d_model) learned region identity, zero-initialised
            (the last row is for unassigned positions).

    """

    def __init__(self, layout: CanvasLayout) -> None:
        super().__init__()
        if not isinstance(layout, CanvasLayout):
            msg = f"SpatiotemporalCanvas needs a CanvasLayout, got {type(layout).__name__}"
            raise CanvasValidationError(msg)
        if layout.num_positions * layout.d_model > MAX_ENCODING_ELEMENTS:
            msg = (
                f"SpatiotemporalCanvas: the position encoding of N={layout.num_positions:,} positions x "
                f"d_model={layout.d_model:,} would hold {layout.num_positions * layout.d_model:,} numbers; "
                f"the limit is MAX_ENCODING_ELEMENTS={MAX_ENCODING_ELEMENTS:,} (2**31): use a smaller grid or d_model"
            )
            raise CanvasValidationError(msg)
        self.layout = layout
        d = layout.d_model
        region_ids = layout.position_region_ids
        real = layout.frame_real_times[region_ids, layout.position_frames]  # (N,), -1 if unassigned
        real = torch.where(real >= 0, real, layout.position_frames)
        periods = torch.tensor([s.period for s in layout.regions.values()] + [1])[region_ids]
        n = layout.num_positions
        hw = torch.arange(n) % (layout.H * layout.W)
        d_t, d_h = d // 4, d // 4
        d_w, d_p = d // 4, d - 3 * (d // 4)
        enc = torch.cat(
            [
                sinusoidal_encoding(real, d_t),
                sinusoidal_encoding(hw // layout.W, d_h),
                sinusoidal_encoding(hw % layout.W, d_w),
                sinusoidal_encoding(periods.float().log2(), d_p),
            ],
            dim=1,
        )
        self.register_buffer("position_encoding", enc, persistent=False)
        self.register_buffer("region_ids", region_ids, persistent=False)
        self.region_embedding = nn.Parameter(torch.zeros(len(layout.regions) + 1, d))

    def create_empty(
        self, batch_size: int, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Return a zero canvas of shape ``(batch_size, N, d_model)``."""
        # bools are refused: True would silently build a batch of one
        check_int(batch_size, "batch_size", minimum=1, rule="a positive integer")
        device = device if device is not None else self.position_encoding.device
        return torch.zeros(batch_size, self.layout.num_positions, self.layout.d_model, device=device, dtype=dtype)

    def _tokens(self, x: torch.Tensor, region: str, batch: int) -> torch.Tensor:
        t, h, w = self.layout.region_size(region)
        d = self.layout.d_model
        if x.dim() == 5 and tuple(x.shape[1:4]) == (t, h, w):
            x = rearrange(x, "b t h w d -> b (t h w) d")
        if x.dim() != 3 or x.shape[0] != batch or x.shape[1] != t * h * w or x.shape[2] != d:
            msg = (
                f"region {region!r} expects tokens of shape ({batch}, {t * h * w}, {d}) "
                f"or ({batch}, {t}, {h}, {w}, {d}), got {tuple(x.shape)}"
            )
            raise CanvasValidationError(msg)
        return x

    def place(self, canvas: torch.Tensor, x: torch.Tensor, region: str) -> torch.Tensor:
        """Return a copy of ``canvas`` with region ``region`` set to ``x`` (differentiable).

        Args:
            canvas: (B, N, d_model).
            x: (B, n_region, d_model) or (B, t, h, w, d_model) tokens of the region.
            region: the region's name.

        """
        self.check_canvas(canvas)
        idx = self.layout.region_indices(region).to(canvas.device)
        x = self._tokens(x, region, canvas.shape[0]).to(canvas.dtype)
        return canvas.index_copy(1, idx, x)

    def extract(self, canvas: torch.Tensor, region: str) -> torch.Tensor:
        """(B, n_region, d_model) tokens of region ``region``."""
        self.check_canvas(canvas)
        idx = self.layout.region_indices(region).to(canvas.device)
        return canvas.index_select(1, idx)

    def encode(self, canvas: torch.Tensor) -> torch.Tensor:
        """``canvas`` plus every position's position and region encodings."""
        self.check_canvas(canvas)
        return canvas + (self.position_encoding + self.region_embedding[self.region_ids]).to(canvas.dtype)

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`encode`."""
        return self.encode(canvas)

    def check_canvas(self, canvas: torch.Tensor) -> None:
        """Check that ``canvas`` is a ``(B, N, d_model)`` tensor of this layout.

        Raises:
            CanvasValidationError: anything else (the message gives the expected and the actual shape).

        """
        n, d = self.layout.num_positions, self.layout.d_model
        if not isinstance(canvas, torch.Tensor) or canvas.dim() != 3 or canvas.shape[1:] != (n, d):
            shape = tuple(canvas.shape) if isinstance(canvas, torch.Tensor) else type(canvas).__name__
            msg = f"canvas must have shape (B, {n}, {d}), got {shape}"
            raise CanvasValidationError(msg)
