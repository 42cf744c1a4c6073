"""Built-in attention types built on per-class key summaries: linear, pooling, copy, perceiver, none.

A group's mask is class-structured: whether query ``i`` may attend key ``j``, and with which
connection weight, depends only on (class of ``i``, class of ``j``), a class being one region
at one canvas frame (see :class:`~canvas_engineering.compilation.attention_mask.ClassView`). Every type
here first reduces the keys of each key class to a summary computed from that class's keys
only, then mixes the summaries of each query class with its row of the (Cq, Ck) weight table
(weight 0 = blocked). A query therefore never receives information from a key the mask blocks
(blocked summaries are multiplied by an exact 0 or masked to ``-inf`` before any softmax), the
cost stays linear in the number of positions, and a query with no allowed key gets 0.

The small helpers here (per-mask index caches, class sums) are shared with
:mod:`canvas_engineering.plugins.attention.state_space`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from canvas_engineering.attention.attention_type import AttentionType, QKVAttentionType
from canvas_engineering.compilation.attention_mask import AttentionMask, ClassView
from canvas_engineering.validation import check_finite_float, check_positive_int

__all__ = ["CopyAttention", "LinearAttention", "NoneAttention", "PerceiverAttention", "PoolingAttention"]


# -- shared helpers ------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[AttentionMask, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()


def option_field(name: str, option: str) -> str:
    """Return the label an attention type's option is named by in errors: ``attention type 'x': option eps``."""
    return f"attention type {name!r}: option {option}"


def mask_cached(mask: AttentionMask, key: str, device: torch.device, build: Callable[[ClassView], tuple]) -> tuple:
    """Return static per-mask index data, built once on CPU from the class view and cached per device.

    ``build(cpu_class_view)`` returns a tuple of CPU tensors and Python scalars; tensors are
    moved to ``device``. The cache is keyed weakly on the mask, so it dies with it.
    """
    store = _CACHE.setdefault(mask, {})
    dev_key = (key, str(device))
    if dev_key not in store:
        cpu_key = (key, "cpu")
        if cpu_key not in store:
            view = mask.class_view()
            cpu_view = ClassView(*(getattr(view, f).cpu() for f in view.__dataclass_fields__))
            with torch.no_grad():
                store[cpu_key] = build(cpu_view)
        store[dev_key] = tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in store[cpu_key])
    return store[dev_key]


def zero_invalid(out: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``out`` (B, nq, d) with the rows of queries that read nothing (``valid`` False) set to exactly 0."""
    return torch.where(valid[:, None], out, out.new_zeros(()))


def class_sum(x: torch.Tensor, cls: torch.Tensor, n_classes: int, dim: int = 1) -> torch.Tensor:
    """Sum ``x`` over the positions of each class along ``dim`` (exact: only that class's entries)."""
    shape = list(x.shape)
    shape[dim] = n_classes
    return x.new_zeros(shape).index_add(dim, cls, x)


def class_mean(x: torch.Tensor, view: ClassView) -> torch.Tensor:
    """(B, nk, d) key tokens -> (B, Ck, d) mean of the tokens of each key class."""
    sums = class_sum(x, view.k_class, view.weights.shape[1])
    return sums / view.k_count.to(x.dtype)[:, None]


def _segment_slots(cls: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, int]:
    """Return padded slot ``class * width + rank`` of each element (rank within its class) and ``width``."""
    counts = torch.bincount(cls, minlength=n_classes)
    order = torch.argsort(cls, stable=True)
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(cls)
    rank[order] = torch.arange(cls.numel()) - starts[cls[order]]
    width = max(int(counts.max()), 1) if cls.numel() else 1
    return cls * width + rank, width


def _pad_by_class(x: torch.Tensor, slots: torch.Tensor, n_classes: int, width: int) -> torch.Tensor:
    """(B, H, n, e) -> (B, H, C, width, e), each class's rows packed, zero elsewhere."""
    b, h, _, e = x.shape
    return x.new_zeros(b, h, n_classes * width, e).index_copy(2, slots, x).unflatten(2, (n_classes, width))


# -- linear --------------------------------------------------------------------------


def _linear_index(view: ClassView) -> tuple:
    cq, ck = view.weights.shape
    k_slots, k_width = _segment_slots(view.k_class, ck)
    q_slots, q_width = _segment_slots(view.q_class, cq)
    return k_slots, k_width, q_slots, q_width, view.allowed.any(1)[view.q_class]


class LinearAttention(QKVAttentionType):
    """Kernelised linear attention with feature map ``phi(x) = elu(x) + 1``, per head.

    Operator (per head, ``c(q)`` the query's class, ``W`` the (Cq, Ck) class weight table)::

        S_c = sum_{k in class c} phi(k) v_k^T        z_c = sum_{k in class c} phi(k)
        M_a = sum_c W[a, c] S_c                       n_a = sum_c W[a, c] z_c
        out_q = phi(beta * q)^T M_{c(q)} / (phi(beta * q)^T n_{c(q)} + eps)

    then the output projection. Mask: blocked classes have ``W = 0`` and drop out of ``M`` and
    ``n`` exactly, so the mask holds per pair. Weights multiply each key's (unnormalised) mass
    in numerator and denominator alike, the linear-attention counterpart of a log-weight bias
    (``weight=0.5`` halves a key's mass; scaling every weight of a row leaves it unchanged).
    ``beta`` multiplies the feature-map input of the queries. A query with no allowed key gets
    0. Cost O(N hd^2 + Cq Ck hd^2) per head.

    Options:
        eps: denominator stabiliser (finite, > 0, default 1e-6).
    """

    name = "linear_attention"
    score_based = True

    def __init__(self, d_model: int, n_heads: int, eps: float = 1e-6, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        self.eps = check_finite_float(eps, option_field(self.name, "eps"), minimum=0, open_min=True)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """(B, nq, d) updates; see the class docstring."""
        view = mask.class_view(queries.device)
        cq, ck = view.weights.shape
        k_slots, k_width, q_slots, q_width, valid = mask_cached(mask, "linear", queries.device, _linear_index)
        q, k, v = self.qkv(queries, keys)  # (B, H, n, hd)
        fq = F.elu(q * float(beta)) + 1.0
        fk = F.elu(k) + 1.0
        fk_p = _pad_by_class(fk, k_slots, ck, k_width)  # (B, H, Ck, wk, hd)
        v_p = _pad_by_class(v, k_slots, ck, k_width)
        s = fk_p.transpose(-1, -2) @ v_p  # (B, H, Ck, hd, hd)
        z = fk_p.sum(3)  # (B, H, Ck, hd)
        w = view.weights.to(q.dtype)
        m = torch.einsum("ac,bhcef->bhaef", w, s)  # (B, H, Cq, hd, hd)
        n = torch.einsum("ac,bhce->bhae", w, z)  # (B, H, Cq, hd)
        fq_p = _pad_by_class(fq, q_slots, cq, q_width)  # (B, H, Cq, wq, hd)
        num = fq_p @ m
        den = fq_p @ n[..., None]
        out = (num / (den + self.eps)).flatten(2, 3).index_select(2, q_slots)  # (B, H, nq, hd)
        return zero_invalid(self.merge(out), valid)


# -- pooling -------------------------------------------------------------------------


def _pool_index(view: ClassView) -> tuple:
    count = (view.allowed.to(torch.float64) @ view.k_count.to(torch.float64)).clamp(min=1)  # (Cq,)
    return (count.float(),)


class PoolingAttention(AttentionType):
    """Weighted mean pooling of the allowed keys' values, no content-based selection.

    Operator: ``out_q = out_proj( sum_{k allowed for q} w_qk v_k / count_allowed(q) )`` with
    ``v = value_proj(key)`` and ``count_allowed(q)`` the number of keys ``q`` may attend.
    Computed from per-class value sums ``U_c``: ``sum_c W[c(q), c] U_c / count``. Mask: blocked
    classes have weight 0 and contribute exactly nothing. Weights are output scales (the output
    projection has no bias, so all weights 0.5 halve the output). ``beta`` is ignored. A query
    with no allowed key gets 0. Cost O(N d + Cq Ck d).
    """

    name = "pooling"
    score_based = False

    def __init__(self, d_model: int, n_heads: int, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """(B, nq, d) updates; see the class docstring."""
        view = mask.class_view(queries.device)
        (count,) = mask_cached(mask, "pooling", queries.device, _pool_index)
        v = self.v_proj(keys)
        sums = class_sum(v, view.k_class, view.weights.shape[1])  # (B, Ck, d)
        pooled = torch.einsum("ac,bcd->bad", view.weights.to(v.dtype), sums) / count.to(v.dtype)[:, None]
        return self.out_proj(pooled.index_select(1, view.q_class))


# -- copy ----------------------------------------------------------------------------


def _copy_index(view: ClassView, q_slot: torch.Tensor, k_slot: torch.Tensor) -> tuple:
    """Slot table and both execution plans of :class:`CopyAttention` (see its docstring)."""
    cq, ck = view.weights.shape
    nk = view.k_class.numel()
    n_slots = torch.zeros(ck, dtype=torch.long).scatter_reduce_(0, view.k_class, k_slot + 1, "amax", include_self=False)
    table = torch.full((ck, int(n_slots.max())), -1, dtype=torch.long)  # (Ck, max_slots), -1 where absent
    table[view.k_class, k_slot] = torch.arange(nk)
    n_allowed = view.allowed.sum(1).clamp(min=1)  # (Cq,) allowed key classes per query class
    w_norm = view.weights.double() / n_allowed[:, None]  # (Cq, Ck), 0 where blocked
    # sparse plan: one (query, key, weight) triple per allowed key class of each query
    allowed = view.allowed[view.q_class]  # (nq, Ck)
    qi, ci = allowed.nonzero(as_tuple=True)
    ki = table[ci, q_slot[qi] % n_slots[ci]]
    keep = ki >= 0
    qi, ci, ki = qi[keep], ci[keep], ki[keep]
    w = w_norm[view.q_class[qi], ci]
    # dense plan: slot-aligned key tokens G[c, s] = key at slot s mod n_c of class c
    n_q_slots = int(q_slot.max()) + 1 if q_slot.numel() else 1
    g_idx = table.gather(1, torch.arange(n_q_slots)[None, :] % n_slots[:, None])  # (Ck, S)
    g_valid = g_idx >= 0
    use_dense = cq * ck * n_q_slots <= 4 * max(qi.numel(), 1)
    return qi, ki, w, use_dense, g_idx.clamp(min=0).flatten(), g_valid, w_norm, q_slot


class CopyAttention(AttentionType):
    """Direct latent transfer: each query receives the raw key token at its own slot.

    Operator: for a query at slot ``s`` (its index within its region's frame) and every allowed
    key class ``c`` (``n_c`` slots), take the key token at slot ``s mod n_c`` of class ``c``::

        out_q = sum_{c allowed} W[c(q), c] * x[key at slot s mod n_c in class c] / n_allowed(q)

    with ``n_allowed(q)`` the number of key classes ``q`` may attend. No learned parameters.
    Mask: only allowed classes are read. Weights are output scales (all weights 0.5 halve the
    output). ``beta`` is ignored (nothing to sharpen). A query with no allowed key gets 0.
    Built from a (Ck, max_slots) table of key indices (-1 where absent; an absent slot reads
    nothing). Two exact plans, chosen per mask: a static (query, key, weight) pair list,
    O(N * allowed classes per query * d), for sparse connectivity; or, when most class pairs
    are allowed, slot-aligned key tokens ``G[c, s]`` mixed by one matmul over classes,
    O(Cq * Ck * slots * d), then gathered at each query's (class, slot).
    """

    name = "copy"
    score_based = False
    #: pairs per index_add chunk (bounds the transient gathered tensor)
    _CHUNK = 1 << 16

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """(B, nq, d) updates; see the class docstring."""
        view = mask.class_view(queries.device)
        qi, ki, w, use_dense, g_idx, g_valid, w_norm, q_slot = mask_cached(
            mask, "copy", queries.device, lambda v: _copy_index(v, mask.q_coords[:, 4].cpu(), mask.k_coords[:, 4].cpu())
        )
        b, _, d = keys.shape
        if use_dense:
            cq, ck = w_norm.shape
            g = keys.index_select(1, g_idx).unflatten(1, (ck, -1))  # (B, Ck, S, d)
            g = torch.where(g_valid[None, :, :, None], g, keys.new_zeros(()))
            out = torch.einsum("ac,bcsd->basd", w_norm.to(keys.dtype), g)  # (B, Cq, S, d)
            return out[:, view.q_class, q_slot]
        out = keys.new_zeros(b, queries.shape[1], d)
        w = w.to(keys.dtype)
        for start in range(0, qi.numel(), self._CHUNK):
            sl = slice(start, start + self._CHUNK)
            out.index_add_(1, qi[sl], keys.index_select(1, ki[sl]) * w[sl, None])
        return out


# -- perceiver -----------------------------------------------------------------------


def _perceiver_index(view: ClassView, n_latents: int) -> tuple:
    allowed = view.allowed.any(1)
    bias = view.weights.double().log()  # (Cq, Ck), -inf blocked
    bias[~allowed] = 0.0  # rows with no allowed class: finite softmax, zeroed afterwards
    return bias.repeat_interleave(n_latents, dim=1), allowed[view.q_class]


class PerceiverAttention(QKVAttentionType):
    """Perceiver-style bottleneck: learned latents summarise each key class, queries read the latents.

    Operator (multi-head, ``L = n_latents`` learned latent vectors ``lat``):

    1. for every key class ``c`` and latent ``l`` (segment softmax over the keys of ``c`` only)::

           Z_{c,l} = lat_l + concat_heads( softmax_{k in c}(beta * lat_l . k_proj(k) / sqrt(hd)) v_proj(k) )

       giving ``Ck * L`` latent tokens;
    2. each query attends to the latent tokens of the classes it may see::

           out_q = out_proj( softmax_{(c, l)}(beta * q_proj(x_q) . lat_k(Z_{c,l}) / sqrt(hd)
                                              + log W[c(q), c]) lat_v(Z_{c,l}) )

    Mask: each latent token summarises one key class only, and the tokens of blocked classes
    get ``-inf`` in step 2. Weights are log-weight biases (``weight=0.5`` halves the mass of that
    class's latent tokens); ``beta`` multiplies the logits of both steps. A query with no
    allowed key gets 0. Cost O(N L d + Nq Ck L d).

    Options:
        n_latents: latent vectors per key class (integer >= 1, default 4).
    """

    name = "perceiver"
    score_based = True

    def __init__(self, d_model: int, n_heads: int, n_latents: int = 4, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        check_positive_int(n_latents, option_field(self.name, "n_latents"))
        self.n_latents = n_latents
        self.latents = nn.Parameter(torch.randn(n_latents, d_model) * d_model**-0.5)
        self.lat_k = nn.Linear(d_model, d_model)
        self.lat_v = nn.Linear(d_model, d_model)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """(B, nq, d) updates; see the class docstring."""
        view = mask.class_view(queries.device)
        ck = view.weights.shape[1]
        n_lat = self.n_latents
        bias, valid = mask_cached(mask, f"perceiver{n_lat}", queries.device, lambda v: _perceiver_index(v, n_lat))
        b = keys.shape[0]
        scale = self.head_dim**-0.5 * float(beta)
        latents = self.latents.to(keys.dtype)
        # 1. latents cross-attend to each key class (segment softmax over the class's keys).
        k, v = self.heads(self.k_proj(keys)), self.heads(self.v_proj(keys))  # (B, H, nk, hd)
        lat_q = rearrange(latents, "l (h e) -> h l e", h=self.n_heads)
        logits = torch.einsum("hle,bhne->bhln", lat_q, k) * scale  # (B, H, L, nk)
        seg_max = logits.new_full((b, self.n_heads, n_lat, ck), float("-inf"))
        classes = view.k_class.expand(logits.shape)  # scatter_reduce (stable), not the beta index_reduce that warns
        seg_max = seg_max.scatter_reduce(3, classes, logits.detach(), "amax", include_self=False)
        p = (logits - seg_max.index_select(3, view.k_class)).exp()
        p = p / class_sum(p, view.k_class, ck, dim=3).index_select(3, view.k_class)
        z = class_sum(p[..., None] * v[:, :, None], view.k_class, ck, dim=3)  # (B, H, L, Ck, hd)
        z = rearrange(z, "b h l c e -> b (c l) (h e)") + latents.repeat(ck, 1)  # (B, Ck*L, d), token c*L + l
        # 2. queries attend to the latent tokens of the classes they may see.
        q = self.heads(self.q_proj(queries))
        lk, lv = self.heads(self.lat_k(z)), self.heads(self.lat_v(z))
        attn_bias = bias.to(q.dtype).index_select(0, view.q_class)  # (nq, Ck * L)
        out = F.scaled_dot_product_attention(q, lk, lv, attn_mask=attn_bias, scale=scale)
        return zero_invalid(self.merge(out), valid)


# -- none ----------------------------------------------------------------------------


class NoneAttention(AttentionType):
    """Ablation: the edge is declared but disabled; returns zeros of shape (B, nq, d_model).

    The output depends on nothing (no parameters, no gradient path); mask, weights and ``beta``
    are ignored. Cost O(0) beyond allocating the zeros.
    """

    name = "none"
    score_based = False

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Zeros (B, nq, d_model)."""
        return torch.zeros(queries.shape[0], queries.shape[1], self.d_model, device=queries.device, dtype=queries.dtype)

