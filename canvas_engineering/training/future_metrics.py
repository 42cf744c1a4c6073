"""Metrics on the *sampled* future, next to simple baselines computed on the same batches.

The teacher-forced training loss averages over noise levels, most of them easy; it cannot
tell a model that predicts the future from one that predicts a blank frame. These metrics
score what the user sees: the denoised future that :meth:`CanvasModule.sample` returns,
per region and per predicted frame.

* :class:`FutureFrameMetric` accumulates, for one region, the per-frame MSE and (for
  ``"patches"`` regions) SSIM (``torchmetrics``' structural similarity) over batches; its
  states are sums, so it reduces over DDP ranks like any torchmetrics metric.
* :func:`repeat_last_baseline` is baseline *(a)*: every predicted frame repeats the region's
  last context frame.
* Other baselines arrive with the batch, under :data:`BASELINES_KEY`:
  ``batch["baselines"][name][region]`` is that baseline's prediction of the region, data
  shaped (the datamodules add ``"mean"``, the per-region mean of the training data, and the
  bouncing-ball data adds ``"constant_velocity"``, rendered from the true positions and
  velocities of the balls).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchmetrics
from torchmetrics.functional.image import structural_similarity_index_measure

from canvas_engineering.errors import CanvasValidationError

__all__ = ["BASELINES_KEY", "FutureFrameMetric", "baselines_from_batch", "future_metrics_table", "repeat_last_baseline"]

#: The batch key under which a datamodule hands baseline predictions to the model.
BASELINES_KEY = "baselines"


def _ssim_per_sample(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM of each ``(C, H, W)`` image pair: ``(n,)`` for inputs ``(n, C, H, W)``.

    The Gaussian window shrinks to fit small frames (odd, at most the smaller side).
    """
    side = min(pred.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11
    return structural_similarity_index_measure(
        pred, target, data_range=data_range, kernel_size=kernel, sigma=sigma, reduction="none"
    )


class FutureFrameMetric(torchmetrics.Metric):
    """Per-frame MSE (and SSIM for images) of one region's predicted frames.

    Args:
        frames: number of predicted frames scored (the region's future frames).
        images: whether the region holds images ``(B, f, C, H, W)`` (adds SSIM).
        data_range: value range of the images for SSIM (1.0 for data in ``[0, 1]``).

    ``update(pred, target)`` takes the predicted frames only, ``(B, frames, ...)``.
    ``compute()`` returns ``{"mse": (frames,), "ssim": (frames,)}`` (SSIM only for images).

    """

    full_state_update = False

    def __init__(self, frames: int, images: bool, data_range: float = 1.0) -> None:
        super().__init__()
        self.frames = int(frames)
        self.images = bool(images)
        self.data_range = float(data_range)
        self.add_state("sse", default=torch.zeros(self.frames, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ssim", default=torch.zeros(self.frames, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted frames ``(B, frames, ...)`` against their targets."""
        if pred.shape != target.shape or pred.shape[1] != self.frames:
            msg = (
                f"FutureFrameMetric: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                f"must both be (B, {self.frames}, ...)"
            )
            raise CanvasValidationError(msg)
        pred, target = pred.detach().float(), target.detach().float()
        b = pred.shape[0]
        self.sse += ((pred - target) ** 2).flatten(2).mean(-1).sum(0).double()
        if self.images:
            ssim = _ssim_per_sample(pred.flatten(0, 1), target.flatten(0, 1), self.data_range)
            self.ssim += ssim.view(b, self.frames).sum(0).double()
        self.count += b

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"mse": (frames,)}`` and, for images, ``{"ssim": (frames,)}``: means over samples."""
        n = self.count.clamp(min=1)
        out = {"mse": (self.sse / n).float()}
        if self.images:
            out["ssim"] = (self.ssim / n).float()
        return out


def repeat_last_baseline(data: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor | None:
    """Baseline (a): every predicted frame repeats the last context frame before it.

    Args:
        data: the region's tensor ``(B, t, ...)``.
        predicted: ``(t,)`` bool, which frames are predicted.

    Returns:
        ``(B, t, ...)`` with each predicted frame replaced by the latest earlier context
        frame, or ``None`` when the first frame is predicted (nothing to repeat).

    """
    predicted = predicted.to(torch.bool).cpu()
    if bool(predicted[0]):
        return None
    # index of the latest context frame at or before each frame (a cumulative max, no loop)
    frame = torch.arange(predicted.numel())
    source = torch.where(predicted, torch.zeros_like(frame), frame).cummax(0).values
    return data[:, source.to(data.device)]


def baselines_from_batch(batch: Mapping[str, object]) -> dict[str, dict[str, torch.Tensor]]:
    """Return the baselines a datamodule attached to ``batch`` (``{}`` when none)."""
    extra = batch.get(BASELINES_KEY) if isinstance(batch, Mapping) else None
    if not isinstance(extra, Mapping):
        return {}
    return {str(name): dict(regions) for name, regions in extra.items() if isinstance(regions, Mapping)}


def future_metrics_table(metrics: Mapping[str, float], stage: str = "val") -> str:
    """Render the logged sampled-future metrics against the baselines as a text table.

    One row per (region, metric, source): the value at each predicted frame and the mean;
    ``sample`` first, then the baselines. Reads keys like ``val/sample/video/mse/frame_4`` and
    ``val/baseline/last/video/mse/frame_4`` (as :class:`~canvas_engineering.CanvasModule`
    logs them); returns ``""`` when there are none.
    """
    rows: dict[tuple[str, str, str], dict[int, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) < 5 or parts[0] != stage or not parts[-1].startswith("frame_"):
            continue
        if parts[1] == "sample" and len(parts) == 5:
            source, region, metric = "sample", parts[2], parts[3]
        elif parts[1] == "baseline" and len(parts) == 6:
            source, region, metric = parts[2], parts[3], parts[4]
        else:
            continue
        rows.setdefault((region, metric, source), {})[int(parts[-1][len("frame_") :])] = float(value)
    if not rows:
        return ""
    lines = []
    for region, metric in sorted({(r, m) for r, m, _ in rows}):
        sources = sorted((s for r, m, s in rows if (r, m) == (region, metric)), key=lambda s: (s != "sample", s))
        frames = sorted({f for s in sources for f in rows[(region, metric, s)]})
        better = "higher" if metric == "ssim" else "lower"
        lines.append(f"{region} {metric} ({better} is better)")
        lines.append(f"  {'':<18}" + "".join(f"{'t=' + str(f):>9}" for f in frames) + f"{'mean':>9}")
        for source in sources:
            values = rows[(region, metric, source)]
            cells = "".join(f"{values[f]:>9.4f}" if f in values else f"{'':>9}" for f in frames)
            mean = sum(values.values()) / len(values)
            lines.append(f"  {source:<18}{cells}{mean:>9.4f}")
    return "\n".join(lines)
