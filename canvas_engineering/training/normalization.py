"""Per-region data normalisation stored with a model: checked on construction, undone on request.

A datamodule that normalises its batches (``EpisodeDataModule``) hands the statistics it
applied to the model (``CanvasModule(normalization=...)``, linked by the CLI): region ->
``{"mean": [...], "std": [...]}`` per element of a vector region or per channel of a patch
region. They are saved with the model's hyperparameters, so a loaded model maps its
predictions back to data units with :func:`denormalize` without the dataset.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.region_codecs import RegionFormat
from canvas_engineering.validation import is_finite_number

__all__ = ["Normalization", "check_normalization", "denormalize", "normalize"]

#: region -> {"mean": [...], "std": [...]}
Normalization = dict[str, dict[str, list[float]]]


def _size(fmt: RegionFormat) -> int:
    return fmt.channels if fmt.kind == "patches" else fmt.dim


def check_normalization(value: object, formats: Mapping[str, RegionFormat]) -> Normalization:
    """Return ``value`` as plain lists after checking it against the fed regions' formats.

    Raises:
        CanvasValidationError: naming the region and the rule: not a fed region, not exactly the
            keys ``mean`` and ``std``, the wrong number of values, a non-finite value or a std <= 0.

    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        msg = f"normalization must map region names to {{'mean': [...], 'std': [...]}}, got {type(value).__name__}"
        raise CanvasValidationError(msg)
    out: Normalization = {}
    for region, stats in value.items():
        if region not in formats:
            msg = f"normalization names region {region!r}, which is not a fed region; fed: {sorted(formats)}"
            raise CanvasValidationError(msg)
        if not isinstance(stats, Mapping) or set(stats) != {"mean", "std"}:
            msg = f"normalization[{region!r}] must have exactly the keys 'mean' and 'std'"
            raise CanvasValidationError(msg)
        size = _size(formats[region])
        lists = {}
        for key in ("mean", "std"):
            v = stats[key]
            v = v.tolist() if hasattr(v, "tolist") else v
            if not isinstance(v, (list, tuple)) or len(v) != size or not all(is_finite_number(x) for x in v):
                msg = f"normalization[{region!r}][{key!r}] must be {size} finite numbers (one per element or channel)"
                raise CanvasValidationError(msg)
            lists[key] = [float(x) for x in v]
        if min(lists["std"]) <= 0:
            msg = f"normalization[{region!r}]['std'] must be > 0"
            raise CanvasValidationError(msg)
        out[str(region)] = lists
    return out


def _broadcast(values: list[float], fmt: RegionFormat, like: torch.Tensor) -> torch.Tensor:
    t = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t.view(-1, 1, 1) if fmt.kind == "patches" else t


def denormalize(
    outputs: Mapping[str, torch.Tensor], normalization: Normalization, formats: Mapping[str, RegionFormat]
) -> dict[str, torch.Tensor]:
    """Map region tensors (``(B, t, ...)``, as batches and :meth:`CanvasModule.sample` shape them) to data units."""
    out = dict(outputs)
    for region, stats in normalization.items():
        if region in out and torch.is_tensor(out[region]):
            x = out[region]
            mean, std = (_broadcast(stats[k], formats[region], x) for k in ("mean", "std"))
            out[region] = x * std + mean
    return out


def normalize(
    data: Mapping[str, torch.Tensor], normalization: Normalization, formats: Mapping[str, RegionFormat]
) -> dict[str, torch.Tensor]:
    """Map region tensors in data units to the normalised units the model was trained on."""
    out = dict(data)
    for region, stats in normalization.items():
        if region in out and torch.is_tensor(out[region]):
            x = out[region]
            mean, std = (_broadcast(stats[k], formats[region], x) for k in ("mean", "std"))
            out[region] = (x - mean) / std
    return out
