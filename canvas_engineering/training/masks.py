"""Per-position masks of a model: which positions are predicted, noised, emptied, and their loss weight.

All are ``(N,)`` vectors over the canvas positions, built once at construction from the
regions' behaviours (one vectorised assignment per region, no loop over positions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.program import CanvasProgram
from canvas_engineering.training.region_behaviour import RegionBehaviour

__all__ = [
    "PositionMasks",
    "compose_canvas",
    "constant_canvas",
    "horizon_scale",
    "position_masks",
    "predicted_frames",
    "region_slice",
]


@dataclass(frozen=True)
class PositionMasks:
    """The ``(N,)`` masks of a model.

    Args:
        target: bool, positions that are predicted (and may take loss).
        noise: bool, predicted positions that start from noise.
        empty: bool, predicted positions that start from zeros (non-noised carriers).
        weight: float, loss weight of each position (0 where nothing is predicted).

    """

    target: torch.Tensor
    noise: torch.Tensor
    empty: torch.Tensor
    weight: torch.Tensor


def position_masks(layout: CanvasLayout, regions: Iterable[RegionBehaviour]) -> PositionMasks:
    """Build the masks for the regions a batch feeds.

    A region's position is predicted when it stands at a real frame ``>= t_current``, the
    region may be predicted (:attr:`RegionBehaviour.may_be_predicted`), and its loss weight
    is positive; everything else is clean context.
    """
    n = layout.num_positions
    future = layout.output_mask()
    target = torch.zeros(n, dtype=torch.bool)
    weight = torch.zeros(n)
    empty = torch.zeros(n, dtype=torch.bool)
    for region in regions:  # a loop over regions, each a vectorised assignment
        idx = layout.region_indices(region.name)
        predicted = future[idx] & region.may_be_predicted
        target[idx] = predicted
        weight[idx] = region.loss_weight * predicted.float()
        if not region.carrier.is_noised:
            empty[idx] = predicted
    return PositionMasks(target=target, noise=target & ~empty, empty=empty, weight=weight)


def horizon_scale(
    layout: CanvasLayout, target: torch.Tensor, names: Iterable[str], weights: Sequence[float] | None
) -> torch.Tensor:
    """Return ``(N,)`` loss-weight factors by prediction horizon.

    ``weights[k]`` applies at each region's ``k``-th predicted frame (the last entry at frames
    beyond the list), 1 elsewhere. Near frames are fully determined by the context and far ones
    are not; weighting the near ones more keeps the irreducible error of the far ones from
    dominating the gradient.
    """
    scale = torch.ones(layout.num_positions)
    if not weights:
        return scale
    table = torch.as_tensor(list(weights), dtype=torch.float32)
    for name in names:  # a loop over regions, each a vectorised assignment
        t, h, w = layout.region_size(name)
        frames = predicted_frames(target, layout, name)  # (t,)
        rank = (torch.cumsum(frames.long(), 0) - 1).clamp(0, len(table) - 1)
        factor = torch.where(frames, table[rank], torch.ones(t))
        scale[layout.region_indices(name)] = factor.repeat_interleave(h * w)
    return scale


def constant_canvas(program: CanvasProgram, names: Iterable[str]) -> torch.Tensor | None:
    """Return ``(N, d_model)`` content of the fixed-content regions ``names`` (``None`` if there are none)."""
    names = list(names)
    if not names:
        return None
    layout = program.schema.layout
    content = torch.zeros(layout.num_positions, layout.d_model)
    for name in names:
        value = torch.as_tensor(program.regions[name].constant_value, dtype=torch.float32)
        content[layout.region_indices(name)] = value  # a number, or one d_model vector per token
    return content


def compose_canvas(noisy: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Return ``noisy`` at noised positions, 0 at emptied ones, ``clean`` elsewhere.

    Args:
        noisy: ``(B, N, d)`` noised canvas.
        clean: ``(B, N, d)`` clean canvas.
        noise: ``(N,)`` bool noised positions.
        empty: ``(N,)`` bool emptied positions.

    """
    out = torch.where(noise[None, :, None], noisy, clean)
    return out.masked_fill(empty[None, :, None], 0.0)


def region_slice(mask: torch.Tensor, layout: CanvasLayout, name: str) -> torch.Tensor:
    """Return the entries of an ``(N,)`` mask at region ``name``'s positions, (t, h, w)-major."""
    return mask[layout.region_indices(name).to(mask.device)]


def predicted_frames(target: torch.Tensor, layout: CanvasLayout, name: str) -> torch.Tensor:
    """Return ``(t,)`` bool: which of region ``name``'s frames hold a predicted position."""
    t, h, w = layout.region_size(name)
    return region_slice(target, layout, name).view(t, h * w).any(1)

