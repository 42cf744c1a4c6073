"""The features a policy reads: one per fed region, checked against the region's per-step shape.

An observation maps feature (region) names to the current step's values: NumPy arrays,
tensors or nested lists, each of the region's per-step shape (``(dim,)`` for a vector region,
``(C, H, W)`` in pixels for a patch region) or with a leading batch dimension. :func:`read_features`
checks every name, shape and value before the model runs and returns ``(B, *shape)`` tensors.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from canvas_engineering.errors import PolicyError

__all__ = ["FeatureSpec", "read_features"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of a policy's observations.

    Args:
        name: the region it feeds.
        shape: its shape at one step (without batch or time dimensions).
        required: whether every observation must hold it.

    """

    name: str
    shape: tuple[int, ...]
    required: bool

    def describe(self) -> str:
        """Return ``name (shape)``, the way error messages show the feature."""
        return f"{self.name!r} {self.shape}"


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if torch.is_tensor(value):
        x = value.detach()
    else:
        try:
            x = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as err:
            msg = f"feature {name!r}: expected an array or tensor of numbers, got {type(value).__name__} ({err})"
            raise PolicyError(msg) from None
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in _INTS):
        msg = f"feature {name!r}: expected real numbers, got dtype {x.dtype}"
        raise PolicyError(msg)
    return x


_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def read_features(
    observation: object, specs: Sequence[FeatureSpec], reserved: Mapping[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], bool]:
    """Check an observation and return ``({feature: (B, *shape) float tensor}, batched)``.

    A bare array is accepted when exactly one feature is required (it is that feature).
    ``reserved`` maps names that are regions but not inputs to the reason (e.g. the action).

    Raises:
        PolicyError: naming the feature: unknown or missing, the wrong shape (with the expected
            one), a non-numeric or non-finite value, or batch sizes that differ between features.

    """
    by_name = {s.name: s for s in specs}
    required = [s for s in specs if s.required]
    if not isinstance(observation, Mapping):
        if len(required) != 1:
            names = ", ".join(s.describe() for s in required)
            msg = f"an observation must map feature names to values (the policy reads {names}); got a bare value"
            raise PolicyError(msg)
        observation = {required[0].name: observation}
    listing = "; ".join(s.describe() + ("" if s.required else " optional") for s in specs)
    for key in observation:
        if key not in by_name:
            why = (reserved or {}).get(key)
            detail = f" ({why})" if why else ""
            msg = f"unknown feature {key!r}{detail}; the policy reads: {listing}"
            raise PolicyError(msg)
    for spec in required:
        if spec.name not in observation:
            expected = f"expected shape {spec.shape} or (B, *{spec.shape})"
            msg = f"missing feature {spec.name!r} ({expected}); got {sorted(observation)}"
            raise PolicyError(msg)
    out: dict[str, torch.Tensor] = {}
    batched: bool | None = None
    size: int | None = None
    for key, value in observation.items():
        spec = by_name[key]
        x = _as_tensor(key, value)
        shape = tuple(x.shape)
        if shape == spec.shape:
            is_batched, x = False, x.unsqueeze(0)
        elif len(shape) == len(spec.shape) + 1 and shape[1:] == spec.shape and shape[0] >= 1:
            is_batched = True
        else:
            msg = f"feature {key!r}: expected shape {spec.shape} or (B, *{spec.shape}), got {shape}"
            raise PolicyError(msg)
        if batched is not None and (is_batched != batched or x.shape[0] != size):
            msg = f"feature {key!r}: batch of {tuple(x.shape)} differs from the other features' (batch size {size})"
            raise PolicyError(msg)
        batched, size = is_batched, x.shape[0]
        x = x.float()
        if not torch.isfinite(x).all():
            msg = f"feature {key!r} holds NaN or infinite values"
            raise PolicyError(msg)
        out[key] = x
    return out, bool(batched)
