"""Batch checks: a canvas batch is a dict of region tensors of the shapes the region formats say."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.errors import BatchValidationError
from canvas_engineering.models.region_codecs import RegionFormat, expected_shape

__all__ = ["Batch", "validate_batch"]

#: A canvas batch: region name -> ``(B, t, ...)`` tensor (and, from datamodules, ``"baselines"``).
Batch = Mapping[str, torch.Tensor]


def validate_batch(batch: object, formats: Mapping[str, RegionFormat], layout: CanvasLayout) -> int:
    """Check every fed region's tensor and return the batch size.

    Raises:
        BatchValidationError: naming the region and the expected and received shapes.

    """
    if not isinstance(batch, Mapping):
        msg = f"a canvas batch must be a dict keyed by region name, got {type(batch).__name__}"
        raise BatchValidationError(msg)
    size = None
    for name, fmt in formats.items():
        want = expected_shape(fmt, layout, name)
        shape = f"(B, {', '.join(map(str, want))})"
        if name not in batch:
            msg = f"batch is missing region {name!r} (expected shape {shape}); got keys {sorted(batch)}"
            raise BatchValidationError(msg)
        x = batch[name]
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        if (
            not torch.is_tensor(x)
            or x.dim() != len(want) + 1
            or tuple(x.shape[1:]) != want
            or (size is not None and x.shape[0] != size)
        ):
            msg = f"region {name!r}: expected a tensor of shape {shape}, received {got}"
            raise BatchValidationError(msg)
        size = x.shape[0]
    return int(size)
