"""The training loss: per-position error in data space, weighted per position and per batch.

``position_losses`` gives each region's squared error per canvas position; ``position_weights``
gives the weight of each position for a batch (the model's loss weight, zeroed at frames
where the region's clock does not fire); ``weighted_loss`` combines them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.errors import NonFiniteLossError
from canvas_engineering.models.region_codecs import RegionFormat

__all__ = ["check_finite_loss", "position_losses", "position_weights", "weighted_loss"]


def position_losses(
    pred: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    formats: Mapping[str, RegionFormat],
    layout: CanvasLayout,
) -> dict[str, torch.Tensor]:
    """Return each region's per-position squared error ``(B, n_region)``, in data space."""
    out = {}
    for name, fmt in formats.items():
        err = (pred[name] - batch[name].to(pred[name].dtype)) ** 2
        t, h, w = layout.region_size(name)
        if fmt.kind == "patches":
            p = fmt.patch_size
            err = err.unflatten(3, (h, p)).unflatten(5, (w, p))  # (B, t, C, h, p, w, p)
            out[name] = err.mean(dim=(2, 4, 6)).flatten(1)  # (B, t*h*w)
        else:
            out[name] = err.mean(-1).repeat_interleave(h * w, dim=1)  # (B, t*h*w)
    return out


def position_weights(
    weight: torch.Tensor,
    layout: CanvasLayout,
    names: list[str],
    updates: Mapping[str, torch.Tensor],
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """Return ``{region: (B, n_region)}`` loss weight of each position for one batch.

    Args:
        weight: ``(N,)`` the model's loss weight per position (0 where nothing is predicted).
        layout: the canvas layout.
        names: the regions to weigh.
        updates: region -> ``(B, t)`` bool frames where its clock fires (regions whose clock
            holds); the other frames of those regions weigh 0.
        batch_size: B.

    """
    out = {}
    for name in names:
        w = weight[layout.region_indices(name).to(weight.device)]  # (n_region,)
        w = w[None].expand(batch_size, -1)
        fires = updates.get(name)
        if fires is not None and not bool(fires.all()):
            _, h, wd = layout.region_size(name)
            w = w * fires.repeat_interleave(h * wd, dim=1).to(w.dtype)  # (B, t*h*w)
        out[name] = w
    return out


def weighted_loss(
    losses: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    pred: Mapping[str, torch.Tensor],
    like: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, float]]]:
    """Combine per-position losses and weights into the loss and per-region ``(loss, weight)``.

    Args:
        losses: region -> ``(B, n_region)`` per-position error.
        weights: region -> ``(B, n_region)`` per-position weight.
        pred: the predictions (a zero loss still backpropagates through them when nothing weighs).
        like: the sums start as zeros of its dtype and device (the clean canvas).

    Returns:
        ``(weighted mean over every weighted position, {region: (its weighted mean, its total weight)})``;
        regions with no weight in this batch are left out, unless their error is non-finite.

    A non-finite error anywhere makes the loss non-finite on purpose: at a position of weight 0
    (``0 * nan`` is NaN) and in a region with no weight in this batch (its non-finite sum is
    added, and it is listed with weight 0 so the message names it). NaN or inf in a batch thus
    always stops with :class:`~canvas_engineering.errors.NonFiniteLossError` (see
    :func:`check_finite_loss`), also where the model's attention contains it and no weighted
    prediction reads it.

    """
    total, weight_sum = like.new_zeros(()), like.new_zeros(())
    regions = {}
    for name, loss in losses.items():
        w = weights[name]  # (B, n_region)
        if not bool(w.any()):
            if not bool(torch.isfinite(loss).all()):  # NaN/inf data in a region that takes no loss
                total = total + loss.sum()
                regions[name] = (loss.sum(), 0.0)
            continue
        total = total + (loss * w).sum()
        weight_sum = weight_sum + w.sum()
        regions[name] = ((loss * w).sum() / w.sum(), float(w.sum()))
    if not regions:  # no clock fired anywhere: a zero loss that still backpropagates
        total = total + sum(0.0 * p.sum() for p in pred.values())
    return total / weight_sum.clamp(min=1e-12), regions


#: how each stage's loss is named in the message of :func:`check_finite_loss`
_STAGES = {"train": "training", "val": "validation", "test": "test"}


def check_finite_loss(
    loss: torch.Tensor, regions: Mapping[str, tuple[torch.Tensor, float]], step: int, stage: str = "train"
) -> None:
    """Stop on a NaN or infinite loss, naming the stage, the step and every region's loss.

    Called for every stage: a non-finite validation or test loss (NaN or inf in the evaluation
    data, usually) raises the same error as in training instead of being logged as ``nan``.

    Args:
        loss: the weighted loss.
        regions: ``{region: (its loss, its weight)}``.
        step: the global step, for the message.
        stage: ``"train"``, ``"val"`` or ``"test"``.

    Raises:
        NonFiniteLossError: the loss is not finite.

    """
    if not torch.isfinite(loss):
        detail = ", ".join(f"{n}={float(v.detach()):.4g}" for n, (v, _) in regions.items())
        name = _STAGES.get(stage, stage)
        if stage == "train":
            advice = "stopping before anything is saved. Lower the learning rate or check the data."
        else:
            advice = f"check the {name} data for NaN or inf values (training has its own check)."
        msg = f"non-finite {name} loss {float(loss.detach())} at step {step} (per-region losses: {detail}); {advice}"
        raise NonFiniteLossError(msg)
