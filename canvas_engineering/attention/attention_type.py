"""``AttentionType``: the interface every attention function type implements.

A type is built from ``(d_model, n_heads, **config)`` and called with the query tokens, the
key/value tokens, the group's :class:`~canvas_engineering.compilation.attention_mask.AttentionMask` and
the sharpening factor ``beta``; it returns updates for the queries. It must never let a
query receive information from a key the mask blocks. Score-based types use connection
weights as log-weight biases on their scores (``weight=0.5`` halves a key's unnormalised
mass) and multiply logits by ``beta``; the others scale their outputs by the weights.

Registering a type: ``registry.add(name, cls)`` in a ``register_attention_types`` hook. This
module installs the registry's check for the kind (``"attention type"``): ``cls`` must be a
concrete subclass of :class:`AttentionType`, anything else is refused when it is added.

Precision: every type runs under ``torch.autocast`` (CPU bfloat16/float16, CUDA) and as a module
converted with ``module.to(dtype)``. Tokens of one floating dtype given to a module whose
weights are another, outside autocast, are refused by :func:`check_input_dtype` with a
:class:`~canvas_engineering.errors.PrecisionError` naming both dtypes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from canvas_engineering.compilation.attention_mask import AttentionMask
from canvas_engineering.errors import CanvasValidationError, PrecisionError
from canvas_engineering.plugin_host.registry import class_rule, set_kind_check
from canvas_engineering.validation import is_int

__all__ = ["AttentionType", "QKVAttentionType", "check_input_dtype", "weight_dtype"]


def weight_dtype(module: nn.Module) -> torch.dtype | None:
    """Return the dtype of ``module``'s first floating-point parameter (``None``: it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def check_input_dtype(x: torch.Tensor, module: nn.Module, where: str, what: str = "tokens") -> None:
    """Refuse ``x`` when its dtype cannot run through ``module`` (call at a public entry, before any work).

    ``x`` must be a floating-point tensor. Outside ``torch.autocast`` (for ``x``'s device) its
    dtype must also be the dtype of ``module``'s weights: PyTorch would otherwise fail deep
    inside with a bare dtype error. Under autocast any floating dtype is accepted (autocast
    casts each operation).

    Args:
        x: the input tensor.
        module: the module it is given to.
        where: the entry point, for the message (``"CanvasAttention"``).
        what: what ``x`` is, for the message (``"tokens"``, ``"region 'video' data"``).

    Raises:
        PrecisionError: ``x`` is not floating point, or its dtype differs from the weights' outside
            autocast; the message names both dtypes and what to use.

    """
    if not x.is_floating_point():
        msg = f"{where}: {what} must be a floating-point tensor, got {x.dtype}; convert with .float()"
        raise PrecisionError(msg)
    weights = weight_dtype(module)
    if weights is None or x.dtype == weights or torch.is_autocast_enabled(x.device.type):
        return
    msg = (
        f"{where}: {what} are {x.dtype} but the module's weights are {weights}; run it under "
        f"torch.autocast({x.device.type!r}, dtype={x.dtype}), convert the module with module.to({x.dtype}), "
        f"or pass {weights} {what}"
    )
    raise PrecisionError(msg)


class AttentionType(nn.Module, ABC):
    """Base class of attention function types.

    Args:
        d_model: token width.
        n_heads: number of heads (must divide ``d_model``).
        **config: type-specific options (each type documents its own).

    Raises:
        CanvasValidationError: ``n_heads`` does not divide ``d_model`` or an option is bad.

    """

    #: registry name, set by subclasses
    name: ClassVar[str] = ""
    #: True when connection weights act on scores (log-weight bias) rather than outputs
    score_based: ClassVar[bool] = True

    def __init__(self, d_model: int, n_heads: int, **config: Any) -> None:
        super().__init__()
        if not (is_int(d_model) and d_model >= 1 and is_int(n_heads) and n_heads >= 1):
            msg = (
                f"attention type {self.name!r}: d_model ({d_model!r}) and n_heads ({n_heads!r}) "
                "must be positive integers"
            )
            raise CanvasValidationError(msg)
        if d_model % n_heads:
            msg = f"attention type {self.name!r}: n_heads ({n_heads}) must divide d_model ({d_model})"
            raise CanvasValidationError(msg)
        if config:
            msg = f"attention type {self.name!r}: unknown option(s) {', '.join(sorted(config))}"
            raise CanvasValidationError(msg)
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads

    @abstractmethod
    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Return (B, nq, d_model) updates for ``queries`` (B, nq, d_model) from ``keys`` (B, nk, d_model)."""


class QKVAttentionType(AttentionType):
    """Base for the dot-product family: q/k/v/out projections and head reshapes."""

    def __init__(self, d_model: int, n_heads: int, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, d_model) -> (B, H, n, hd)."""
        return rearrange(x, "b n (h e) -> b h n e", h=self.n_heads)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, n, hd) -> (B, n, d_model) through the output projection."""
        return self.out_proj(rearrange(x, "b h n e -> b n (h e)"))

    def qkv(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected (B, H, n, hd) queries, keys and values."""
        return self.heads(self.q_proj(queries)), self.heads(self.k_proj(keys)), self.heads(self.v_proj(keys))


def _attention_type_rule(obj: object) -> str | None:
    """Registry check of the ``"attention type"`` kind: a concrete :class:`AttentionType` subclass."""
    return class_rule(obj, AttentionType, "canvas_engineering.AttentionType", "cls(d_model=..., n_heads=..., **config)")


set_kind_check("attention type", _attention_type_rule)
