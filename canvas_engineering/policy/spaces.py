"""Between a policy's action tensors and a gymnasium action space.

A canvas action region holds real numbers per step: a one-hot (or logits) over the choices of a
``Discrete`` space, a vector for a ``Box``. :func:`to_env_action` turns a batch of them into
what ``env.step`` takes: the argmax for ``Discrete`` (the way the CartPole example decoded its
one-hot actions), values clipped to the bounds for ``Box``, a threshold at 0.5 for
``MultiBinary``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from canvas_engineering.errors import PolicyError

__all__ = ["to_env_action"]


def to_env_action(action: torch.Tensor | np.ndarray, space: Any) -> np.ndarray:
    """Return ``(B, ...)`` env actions for a ``(B, dim)`` batch of action values (data units).

    Integer actions (already decoded, e.g. from a scripted policy) pass through for ``Discrete``.

    Raises:
        PolicyError: a space that is not ``Discrete``, ``Box`` or ``MultiBinary``, or values whose
            size does not fit it (the message names both).

    """
    from gymnasium import spaces

    x = action.detach().cpu().numpy() if torch.is_tensor(action) else np.asarray(action)
    if x.ndim == 0:
        x = x[None]
    b = x.shape[0]
    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)
        if np.issubdtype(x.dtype, np.integer):
            return x.reshape(b).astype(np.int64)
        flat = x.reshape(b, -1)
        if flat.shape[1] == n:
            return flat.argmax(-1).astype(np.int64) + start
        if flat.shape[1] == 1:
            return np.clip(np.rint(flat[:, 0]), 0, n - 1).astype(np.int64) + start
        msg = f"action of size {flat.shape[1]} does not fit {space}: expected {n} scores (argmax) or 1 index"
        raise PolicyError(msg)
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        shape = tuple(space.shape)
        if int(np.prod(x.shape[1:], dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
            msg = f"action of shape {tuple(x.shape[1:])} does not fit {space} (shape {shape})"
            raise PolicyError(msg)
        x = x.reshape(b, *shape)
        if isinstance(space, spaces.MultiBinary):
            return (x > 0.5).astype(space.dtype)
        return np.clip(x, space.low, space.high).astype(space.dtype)
    msg = f"action space {space} is not supported (Discrete, Box or MultiBinary); decode the policy's actions yourself"
    raise PolicyError(msg)
