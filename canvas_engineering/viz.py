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


def layout_figure(layout: CanvasLayout, max_frames: int = 8) -> Figure:
    """One H x W panel per canvas frame (up to ``max_frames``), coloured by region."""
    plt = _pyplot()
    frames = min(layout.T, max_frames)
    colors = _region_colors(layout)
    grid = layout.position_region_ids.reshape(layout.T, layout.H, layout.W)
    fig, axes = plt.subplots(1, frames, figsize=(2.0 * frames + 1.5, 2.4), squeeze=False)
    for t, ax in enumerate(axes[0]):
        ax.imshow(colors[grid[t]].numpy(), interpolation="nearest")
        ax.set_title(f"t={t}" + (" (future)" if t >= layout.t_current else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colors[i].tolist(), label=f"{name} ({spec.size})")
        for i, (name, spec) in enumerate(layout.regions.items())
    ]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"Canvas {layout.T}x{layout.H}x{layout.W} = {layout.num_positions:,} positions", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 0.95))
    return fig


def mask_figure(plan: AttentionPlan, block_size: int = 64) -> Figure:
    """Plot the compiled attention mask (weights); block tiles when N is large."""
    plt = _pyplot()
    n = plan.num_positions
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if n <= MAX_DENSE_PICTURE:
        image = plan.dense_weights().numpy()
        title = f"attention weights ({plan.num_allowed_pairs / n**2:.1%} of {n}x{n} pairs allowed)"
    else:
        view = plan.block_view(block_size)
        image = (view.nonempty.float() + view.full.float()).numpy()
        title = f"{block_size}-tiles: grey partial, black full ({view.density:.1%} non-empty)"
    im = ax.imshow(image, cmap="Greys", interpolation="nearest")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save a figure as PNG atomically and close it."""
    import io

    from canvas_engineering._atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())
