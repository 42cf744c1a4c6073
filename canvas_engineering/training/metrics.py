"""Metrics of a canvas model: per-region losses per stage, and scores of the sampled future.

* :func:`region_loss_metrics` builds one torchmetrics ``MetricCollection`` of weighted means
  (one per loss-taking region, plus ``"loss"``), cloned per stage (train/val/test).
* :class:`SampledFutureMetrics` owns the :class:`~canvas_engineering.training.future_metrics.FutureFrameMetric`
  of each (source, region) pair: ``"sample"`` (the model's sampled future) and every baseline.
  They are created on first use (baselines arrive with the batches) and are not part of the
  model's state dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import torch
import torchmetrics
from torch import nn

from canvas_engineering.training.arguments import module_key
from canvas_engineering.training.future_metrics import FutureFrameMetric, baselines_from_batch, repeat_last_baseline

if TYPE_CHECKING:
    from canvas_engineering.training.module import CanvasModule

__all__ = ["STAGES", "SampledFutureMetrics", "log_region_losses", "region_loss_metrics", "update_region_losses"]

#: The stages that log losses.
STAGES = ("train", "val", "test")


def region_loss_metrics(keys: Iterable[str]) -> nn.ModuleDict:
    """Return ``{"{stage}_metrics": MetricCollection}`` of weighted means, one collection per stage.

    Args:
        keys: module keys of the regions that take loss (``"loss"`` is added for the total).

    """
    # keys get a suffix: "train" would clash with nn.Module.train
    means = {key: torchmetrics.MeanMetric() for key in [*keys, "loss"]}
    # each region's mean is updated on its own, so metrics must not share state (compute groups)
    collection = torchmetrics.MetricCollection(means, compute_groups=False)
    return nn.ModuleDict({f"{stage}_metrics": collection.clone() for stage in STAGES})


def update_region_losses(
    collection: torchmetrics.MetricCollection,
    regions: Mapping[str, tuple[torch.Tensor, float]],
    loss: torch.Tensor,
    batch_size: int,
) -> None:
    """Add one step's per-region ``(loss, weight)`` pairs and its total loss (weighted by ``batch_size``).

    Args:
        collection: the stage's collection.
        regions: region name -> (its weighted mean loss, its total weight).
        loss: the step's loss.
        batch_size: the weight of the total.

    """
    for name, (value, weight) in regions.items():
        collection[module_key(name)].update(value.detach(), weight=weight)
    collection["loss"].update(loss.detach(), weight=batch_size)


def log_region_losses(
    model: CanvasModule, collection: torchmetrics.MetricCollection, stage: str, names: Mapping[str, str]
) -> None:
    """Log ``{stage}/{region}/loss`` for every region updated this epoch, then reset the collection.

    Args:
        model: logs through its ``log``.
        collection: the stage's collection.
        stage: ``"train"``, ``"val"`` or ``"test"``.
        names: module key -> region name.

    """
    for key, metric in collection.items(keep_base=True):
        if key != "loss" and metric.update_called:
            model.log(f"{stage}/{names[key]}/loss", metric.compute(), sync_dist=True)
        metric.reset()


class SampledFutureMetrics:
    """Scores of the sampled future and of each baseline, per region and predicted frame.

    Keys are ``"{source}/{region}"`` with source ``"sample"``, ``"last"`` or a baseline name
    a datamodule put under ``batch["baselines"]``.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, FutureFrameMetric] = {}

    def __len__(self) -> int:
        return len(self.metrics)

    def update(
        self,
        sampled: Mapping[str, torch.Tensor],
        batch: Mapping[str, torch.Tensor],
        images: Mapping[str, bool],
        predicted_frames: Callable[[str], torch.Tensor],
        device: torch.device,
    ) -> None:
        """Score ``sampled`` and every baseline against ``batch`` at the predicted frames.

        Args:
            sampled: region -> the model's sample of ``batch``.
            batch: the data (and its baselines).
            images: region -> whether it holds images (adds SSIM).
            predicted_frames: region -> ``(t,)`` bool predicted frames.
            device: where the metrics live.

        """
        extra = baselines_from_batch(batch)
        for name, is_image in images.items():
            frames = predicted_frames(name)
            if not bool(frames.any()):
                continue
            target = batch[name].to(device, torch.float32)
            sources = {"sample": sampled[name], "last": repeat_last_baseline(target, frames)}
            sources.update({b: regions[name] for b, regions in extra.items() if name in regions})
            idx = frames.nonzero().flatten().to(device)
            for source, value in sources.items():
                if value is None:
                    continue
                key = f"{source}/{name}"
                if key not in self.metrics:
                    with torch.inference_mode(False):  # ordinary state tensors, updatable outside validation too
                        metric = FutureFrameMetric(int(idx.numel()), images=is_image)
                    self.metrics[key] = metric.to(device)
                pred = value.to(device, torch.float32).index_select(1, idx)
                self.metrics[key].update(pred, target.index_select(1, idx))

    def log(self, model: CanvasModule, stage: str) -> None:
        """Log and reset every updated metric.

        Keys: ``{stage}/sample/{region}/{metric}`` and ``{stage}/baseline/{name}/{region}/{metric}``,
        each the mean over the predicted frames, plus ``.../frame_{t}`` per canvas frame.
        """
        for key, metric in sorted(self.metrics.items()):
            if not metric.update_called:
                continue
            source, name = key.split("/", 1)
            prefix = f"{stage}/sample/{name}" if source == "sample" else f"{stage}/baseline/{source}/{name}"
            spec = model.layout.region_spec(name)
            frames = (model.predicted_frames(name).nonzero().flatten() * spec.period + spec.bounds[0]).tolist()
            for metric_name, values in metric.compute().items():
                model.log(f"{prefix}/{metric_name}", values.mean(), sync_dist=False)
                for t, value in zip(frames, values, strict=True):
                    model.log(f"{prefix}/{metric_name}/frame_{t}", value, sync_dist=False)
            with torch.inference_mode(False):
                metric.reset()
