"""Pictures of a canvas: region allocation and attention masks (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from canvas_engineering.compilation.compiler import AttentionPlan
from canvas_engineering.declare.layout import CanvasLayout

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["layout_figure", "mask_figure", "save_figure"]

#: Largest N for which the mask picture shows every position (above: block view).
MAX_DENSE_PICTURE = 4096


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a screen
    import matplotlib.pyplot as plt

    return plt


def _region_colors(layout: CanvasLayout) -> torch.Tensor:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i % 20)[:3] for i in range(len(layout.regions))] + [(0.93, 0.93, 0.93)]
    return torch.tensor(colors)


#: Most frame panels per row of :func:`layout_figure` (longer canvases wrap into rows).
LAYOUT_COLUMNS = 6

#: Most labelled frame ticks per axis of :func:`mask_figure` (longer canvases label every k-th frame).
MAX_FRAME_LABELS = 16


def _region_legend(layout: CanvasLayout, colors: torch.Tensor) -> list:
    plt = _pyplot()
    return [
        plt.Rectangle((0, 0), 1, 1, color=colors[i].tolist(), label=f"{name} ({spec.size})")
        for i, (name, spec) in enumerate(layout.regions.items())
    ]


def layout_figure(layout: CanvasLayout, max_frames: int = 24) -> Figure:
    """One H x W panel per canvas frame (up to ``max_frames``), coloured by region.

    Frames wrap into rows of :data:`LAYOUT_COLUMNS` panels, so the picture of a long canvas
    stays about 1,700 px wide at the default 110 dpi of :func:`save_figure` and its text
    stays legible. Panels of future frames (``t >= t_current``) say so in their title.
    """
    plt = _pyplot()
    frames = min(layout.T, max_frames)
    cols = min(frames, LAYOUT_COLUMNS)
    rows = -(-frames // cols)
    colors = _region_colors(layout)
    grid = layout.position_region_ids.reshape(layout.T, layout.H, layout.W)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols + 3.0, 2.2 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= frames:
            ax.set_axis_off()
            continue
        ax.imshow(colors[grid[i]].numpy(), interpolation="nearest")
        ax.set_title(f"t={i}" + (" (future)" if i >= layout.t_current else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(handles=_region_legend(layout, colors), loc="center right", fontsize=9, frameon=False)
    shown = "" if frames == layout.T else f" (first {frames} of {layout.T} frames)"
    fig.suptitle(f"Canvas {layout.T}x{layout.H}x{layout.W} = {layout.num_positions:,} positions{shown}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1.0 - 2.8 / (2.0 * cols + 3.0), 0.95))
    return fig


def _frame_ticks(layout: CanvasLayout, scale: float) -> tuple[list[float], list[str], list[float]]:
    """Tick positions (frame centres, every k-th frame labelled) and frame boundaries, in image units."""
    hw = layout.H * layout.W
    step = max(1, -(-layout.T // MAX_FRAME_LABELS))
    shown = range(0, layout.T, step)
    centres = [((t + 0.5) * hw) / scale - 0.5 for t in shown]
    labels = [f"t={t}" + ("*" if t >= layout.t_current else "") for t in shown]
    bounds = [t * hw / scale - 0.5 for t in range(1, layout.T)]
    return centres, labels, bounds


def mask_figure(plan: AttentionPlan, block_size: int = 64) -> Figure:
    """Plot the compiled attention mask (weights); block tiles when N is large.

    The axes carry one tick per canvas frame (``t=k``, starred from ``t_current`` on; every
    k-th frame when there are more than :data:`MAX_FRAME_LABELS`) with thin lines at frame
    boundaries, and colour strips above and beside the mask show the region of every key and
    query position, named in the legend (the colours of :func:`layout_figure`).
    """
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    plt = _pyplot()
    layout = plan.layout
    n = plan.num_positions
    fig, ax = plt.subplots(figsize=(7.5, 6.4))
    if n <= MAX_DENSE_PICTURE:
        image, scale = plan.dense_weights().numpy(), 1.0
        title = f"attention weights ({plan.num_allowed_pairs / n**2:.1%} of {n}x{n} pairs allowed)"
    else:
        view = plan.block_view(block_size)
        image, scale = (view.nonempty.float() + view.full.float()).numpy(), float(block_size)
        title = f"{block_size}-tiles: grey partial, black full ({view.density:.1%} non-empty)"
    im = ax.imshow(image, cmap="Greys", interpolation="nearest", aspect="auto")
    size = image.shape[0]
    centres, labels, bounds = _frame_ticks(layout, scale)
    ax.set_xticks(centres, labels, fontsize=7, rotation=0 if len(labels) <= 8 else 90)
    ax.set_yticks(centres, labels, fontsize=7)
    for b in bounds:
        ax.axvline(b, color="tab:blue", lw=0.3, alpha=0.5)
        ax.axhline(b, color="tab:blue", lw=0.3, alpha=0.5)
    ax.set_xlabel("key position (canvas frame)")
    ax.set_ylabel("query position (canvas frame)")
    # region strips: the region id of every position, stretched over the mask's rows/columns
    colors = _region_colors(layout)
    strip = colors[layout.position_region_ids].numpy()  # (N, 3)
    extent_len = size - 0.5
    divider = make_axes_locatable(ax)
    top = divider.append_axes("top", size="4%", pad=0.04)
    top.imshow(strip[None], aspect="auto", interpolation="nearest", extent=(-0.5, extent_len, 0, 1))
    top.set_axis_off()
    top.set_title(title, fontsize=9)
    side = divider.append_axes("right", size="4%", pad=0.04)
    side.imshow(strip[:, None], aspect="auto", interpolation="nearest", extent=(0, 1, extent_len, -0.5))
    side.set_axis_off()
    bar = divider.append_axes("right", size="4%", pad=0.5)
    fig.colorbar(im, cax=bar, label="weight" if scale == 1.0 else "tile")
    fig.legend(handles=_region_legend(layout, colors), loc="lower center", ncol=min(4, len(layout.regions)) or 1,
               fontsize=8, frameon=False, title="regions (strips above and right)", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(layout.regions) - 1) // 4), 1, 1))
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save a figure as PNG atomically and close it."""
    import io

    from canvas_engineering._atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())
