"""Built-in score-based attention types: the dot-product, gating, sparse and meta families.

All of them respect the mask exactly (blocked keys get zero weight), add ``log(weight)`` to
their logits (so ``weight=0.5`` halves a key's unnormalised mass) and multiply logits by beta.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from canvas_engineering.plugins.attention.summaries import option_field
from einops import rearrange
from torch import nn

from canvas_engineering.attention.attention_type import QKVAttentionType
from canvas_engineering.attention.kernels import score_attention, softmax_attention
from canvas_engineering.compilation.attention_mask import AttentionMask
from canvas_engineering.validation import (
    check_finite_float,
    check_int,
    check_non_negative_int,
    check_positive_int,
)

__all__ = [
    "CogVideoXAttention",
    "CosineAttention",
    "CrossAttention",
    "GatedAttention",
    "LocalAttention",
    "MixtureAttention",
    "RandomFixedAttention",
    "SigmoidAttention",
    "SparseAttention",
]


class CrossAttention(QKVAttentionType):
    """Softmax QKV attention (the default type)."""

    name = "cross_attention"

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        return self.merge(softmax_attention(q, k, v, mask, beta))


class CosineAttention(QKVAttentionType):
    """Softmax over cosine similarities times a fixed scale (``scale``, default 10)."""

    name = "cosine_attention"

    def __init__(self, d_model: int, n_heads: int, scale: float = 10.0, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        self.scale = check_finite_float(scale, option_field(self.name, "scale"), minimum=0, open_min=True)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return self.merge(softmax_attention(q, k, v, mask, beta, scale=self.scale))


def _sigmoid_mix(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each allowed key independently gated: ``w * sigmoid(logit)``, averaged over the allowed keys."""
    count = (weights > 0).sum(-1, keepdim=True).clamp(min=1)
    return weights * torch.sigmoid(logits) / count


class SigmoidAttention(QKVAttentionType):
    """Independent sigmoid per key instead of softmax (non-exclusive attention)."""

    name = "sigmoid_attention"

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        return self.merge(score_attention(q, k, v, mask, _sigmoid_mix, beta))


class GatedAttention(QKVAttentionType):
    """Cross-attention behind a learned sigmoid gate computed from each query token."""

    name = "gated"

    def __init__(self, d_model: int, n_heads: int, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        self.gate = nn.Linear(d_model, d_model)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        return torch.sigmoid(self.gate(queries)) * self.merge(softmax_attention(q, k, v, mask, beta))


class SparseAttention(QKVAttentionType):
    """Top-k attention: only the ``top_k`` largest (weighted) logits per query survive softmax."""

    name = "sparse_attention"

    def __init__(self, d_model: int, n_heads: int, top_k: int = 8, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        check_positive_int(top_k, option_field(self.name, "top_k"))
        self.top_k = top_k

    def _mix(self, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        allowed = weights > 0
        # A finite floor instead of -inf keeps softmax (and its gradient) finite on rows
        # with no allowed key; those rows are zeroed by `allowed` below.
        floor = torch.finfo(logits.dtype).min / 2
        scores = torch.where(allowed, logits + weights.clamp(min=1e-30).log(), floor)
        k = min(self.top_k, scores.shape[-1])
        kth = scores.topk(k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, floor)
        return torch.softmax(scores, dim=-1) * allowed

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        return self.merge(score_attention(q, k, v, mask, self._mix, beta))


class _PairMask:
    """A position-level extra mask bound to one group mask (hashable, so tiles are cached)."""

    def __init__(self, mask: AttentionMask, fn: Any, key: tuple) -> None:
        self.mask, self.fn, self.key = mask, fn, key

    def __call__(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        return self.fn(self.mask, q_idx, k_idx)

    def __hash__(self) -> int:
        return hash((id(self.mask), self.key))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PairMask) and other.mask is self.mask and other.key == self.key


class LocalAttention(QKVAttentionType):
    """Softmax attention within a spatial window: ``|h_q - h_k| <= window`` and ``|w_q - w_k| <= window``."""

    name = "local_attention"

    def __init__(self, d_model: int, n_heads: int, window: int = 1, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        check_non_negative_int(window, option_field(self.name, "window"))
        self.window = window

    @staticmethod
    def _near(mask: AttentionMask, q_idx: torch.Tensor, k_idx: torch.Tensor, window: int) -> torch.Tensor:
        dq = mask.q_coords.to(q_idx.device)[q_idx]
        dk = mask.k_coords.to(k_idx.device)[k_idx]
        return ((dq[..., 1] - dk[..., 1]).abs() <= window) & ((dq[..., 2] - dk[..., 2]).abs() <= window)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        near = _PairMask(mask, lambda m, a, b: self._near(m, a, b, self.window), ("local", self.window))
        return self.merge(softmax_attention(q, k, v, mask, beta, extra_mask=near))


class RandomFixedAttention(QKVAttentionType):
    """Softmax attention over a random subset of the allowed keys, fixed at init by ``seed``.

    A pair (query position, key position) is kept when a hash of both canvas positions and the
    seed falls below ``keep``; nothing N x N is stored.
    """

    name = "random_fixed"

    def __init__(self, d_model: int, n_heads: int, keep: float = 0.5, seed: int | None = None, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        check_finite_float(keep, option_field(self.name, "keep"), minimum=0, maximum=1, open_min=True)
        self.keep = float(keep)
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        self.register_buffer("seed", torch.tensor(seed), persistent=True)

    @staticmethod
    def _kept(mask: AttentionMask, q_idx: torch.Tensor, k_idx: torch.Tensor, seed: int, keep: float) -> torch.Tensor:
        qp = mask.q_positions.to(q_idx.device)[q_idx]
        kp = mask.k_positions.to(k_idx.device)[k_idx]
        h = (qp * 73856093) ^ (kp * 19349663) ^ seed
        h = (h * 2654435761) % 4294967296
        h = (h ^ (h >> 16)) * 2246822519 % 4294967296
        return (h % 10007).float() < keep * 10007

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        seed = int(self.seed)
        kept = _PairMask(mask, lambda m, a, b: self._kept(m, a, b, seed, self.keep), ("random", seed, self.keep))
        return self.merge(softmax_attention(q, k, v, mask, beta, extra_mask=kept))


class MixtureAttention(QKVAttentionType):
    """Mixture of expert heads: a learned router picks the ``top_k`` heads per query token."""

    name = "mixture"

    def __init__(self, d_model: int, n_heads: int, top_k: int = 2, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        check_int(
            top_k,
            option_field(self.name, "top_k"),
            minimum=1,
            maximum=n_heads,
            rule=f"an integer in [1, n_heads={n_heads}]",
        )
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_heads)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        heads = softmax_attention(q, k, v, mask, beta)  # (B, H, nq, hd)
        logits = self.router(queries)  # (B, nq, H)
        top = logits.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top.indices, torch.softmax(top.values, dim=-1))
        return self.merge(heads * rearrange(gates, "b n h -> b h n 1"))


def _rotary(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of (B, H, n, d) by positions (n,) over the last dim (d even)."""
    d = x.shape[-1]
    freqs = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = pos.to(x.device, torch.float32)[:, None] * freqs[None]  # (n, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class CogVideoXAttention(QKVAttentionType):
    """CogVideoX-style attention: per-head LayerNorm on q and k and 3D rotary positions (t, h, w).

    The graft (``graft_looped_blocks``) uses the pretrained backbone's own attention with the
    canvas plan; this type gives the same operator to from-scratch canvas models.
    """

    name = "cogvideox"

    def __init__(self, d_model: int, n_heads: int, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        check_int(self.head_dim, option_field(self.name, "head_dim (d_model / n_heads)"), minimum=6)
        self.norm_q = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(self.head_dim, eps=1e-6)
        third = 2 * (self.head_dim // 6)
        self.splits = (third, third, self.head_dim - 2 * third)

    def _rope(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, dim=-1)
        axes = (coords[:, 3], coords[:, 1], coords[:, 2])  # real time, h, w
        rotated = [_rotary(p, a) if p.shape[-1] % 2 == 0 else p for p, a in zip(parts, axes, strict=True)]
        return torch.cat(rotated, dim=-1)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Attend ``queries`` to ``keys`` under ``mask`` (see :meth:`AttentionType.forward`)."""
        q, k, v = self.qkv(queries, keys)
        q = self._rope(self.norm_q(q), mask.q_coords)
        k = self._rope(self.norm_k(k), mask.k_coords)
        return self.merge(softmax_attention(q, k, v, mask, beta))

