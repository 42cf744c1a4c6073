"""Softmax attention over a group's mask with three interchangeable kernels.

* ``"partitioned"``: the queries are partitioned by the keys they read (see
  :mod:`~canvas_engineering.compilation.partition_plan`) and each partition runs fused SDPA
  over exactly those keys; the CPU default. A position-level ``extra_mask`` (a spatial
  window) runs ``"tiled"`` instead.
* ``"tiled"``: tile-packed SDPA. The non-empty (query block, key block) tiles are gathered
  into windows and batched so dense SDPA runs only where attention is allowed; tiles that
  are fully allowed with weight 1 run without any mask (SDPA's fastest path).
* ``"flex"``: FlexAttention with a ``BlockMask`` (from the same tiles) and a ``score_mod``
  adding log weights (GPU, or CPU without gradients: torch refuses flex backward on CPU).
* ``"dense"``: SDPA with the full (nq, nk) additive mask, the reference.

All compute ``softmax(beta * q.k * scale + log w) v`` over allowed keys; a query with no
allowed key gets 0. What a kernel needs on a device (dense bias, tile biases, ``BlockMask``,
``score_mod``) comes from the mask's :class:`~canvas_engineering.compilation.attention_mask.ViewCache`, so
it is built once per (mask, device, dtype), not per call, and shared by every block running
the same plan.

Non-finite values are contained, in every kernel (:func:`softmax_attention` and
:func:`score_attention`): output row ``i`` is non-finite exactly when a key ``i`` may read
(class mask AND ``extra_mask``) has a non-finite key or value, or query ``i`` itself is
non-finite; every other row is what the kernel computes from the finite values alone, and
its gradients are finite. Without this, masked probabilities of 0 times a NaN value give NaN
and tile/partition gathers hold keys a query may not read, so one NaN token spread to rows
the mask forbids from reading it. Cost: one reduction over q, k and v per call (a device
sync on GPU); only when it finds a non-finite value are the bad rows zeroed before the
kernel and the rows that may read them (:meth:`AttentionMask.rows_reading`, from the class
structure) set to NaN after it. Rows that may read a non-finite value are never hidden.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from canvas_engineering.attention.partitioned import partitioned_attention
from canvas_engineering.compilation.attention_mask import KERNELS, AttentionMask, ExtraMask, TilePlan, check_kernel
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.validation import check_finite_float

__all__ = [
    "KERNELS",
    "SMALL_GROUP_PAIRS",
    "Kernel",
    "check_beta",
    "resolve_kernel",
    "score_attention",
    "softmax_attention",
]

Kernel = Literal["auto", "flex", "partitioned", "tiled", "dense"]


#: Groups with at most this many (query, key) pairs run the dense kernel under "auto" on CPU:
#: below it one fused SDPA call beats gathering tiles (measured by benchmarks/train.py).
SMALL_GROUP_PAIRS = 1 << 16


def check_beta(beta: object, where: str) -> float:
    """Return the sharpening factor ``beta`` as a float if it is finite and > 0, else raise naming ``where``.

    ``beta`` multiplies every logit: NaN or inf turns every output into NaN, 0 or less
    flattens or inverts attention. A number (NumPy scalars included) or a one-element tensor.

    Raises:
        CanvasValidationError: ``beta`` is not a finite number > 0.

    """
    if isinstance(beta, torch.Tensor) and beta.numel() == 1:
        beta = beta.item()
    return check_finite_float(beta, f"{where}: beta", minimum=0, open_min=True)


def _all_finite(*tensors: torch.Tensor) -> bool:
    """Whether every value is finite, from one sum per tensor (NaN and inf survive a sum).

    A sum that overflows to inf reads as "not finite" too; the caller then checks row by row.
    """
    total = None
    for t in tensors:
        t = t.detach()
        part = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
        total = part if total is None else total + part
    return bool(torch.isfinite(total))


def _contained(
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    extra_mask: ExtraMask,
) -> torch.Tensor:
    """``run(q, k, v)``, with a non-finite value reaching exactly the rows allowed to read it (module docstring)."""
    if _all_finite(q, k, v):
        return run(q, k, v)
    bad_q = ~torch.isfinite(q).all(-1)  # (B, H, nq)
    bad_k = ~(torch.isfinite(k).all(-1) & torch.isfinite(v).all(-1))  # (B, H, nk)
    if not bool(bad_q.any() | bad_k.any()):  # the sums overflowed; every value is finite
        return run(q, k, v)
    # zeroed, the bad rows cannot leak through 0-probability products or shared tiles (nor
    # into gradients); masked_fill passes no gradient to what it replaced
    q = q.masked_fill(bad_q[..., None], 0.0)
    k = k.masked_fill(bad_k[..., None], 0.0)
    v = v.masked_fill(bad_k[..., None], 0.0)
    rows = bad_q | mask.rows_reading(bad_k, extra_mask)
    return run(q, k, v).masked_fill(rows[..., None], float("nan"))


def resolve_kernel(
    kernel: str, device: torch.device, needs_grad: bool, pairs: int | None = None, extra_mask: bool = False
) -> str:
    """Pick the kernel for ``"auto"``: flex on GPU; partitioned, tiled or (small groups) dense SDPA on CPU.

    Dense SDPA runs groups of at most :data:`SMALL_GROUP_PAIRS` pairs (``pairs`` = nq * nk
    when known); with a position-level ``extra_mask`` the CPU runs ``"tiled"`` (also when
    ``"partitioned"`` is asked for: partitions are class-level).

    Raises:
        CanvasValidationError: unknown kernel, or ``"flex"`` asked to train on the CPU.

    """
    check_kernel(kernel, "resolve_kernel")
    if kernel == "flex" and device.type == "cpu" and needs_grad:
        msg = "kernel 'flex' cannot train on CPU (torch refuses FlexAttention backward on CPU); use 'tiled' or 'auto'"
        raise CanvasValidationError(msg)
    if kernel == "partitioned" and extra_mask:
        return "tiled"
    if kernel != "auto":
        return kernel
    if device.type == "cuda":
        return "flex"
    if pairs is not None and pairs <= SMALL_GROUP_PAIRS:
        return "dense"
    return "tiled" if extra_mask else "partitioned"


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    beta: float = 1.0,
    scale: float | None = None,
    kernel: str | None = None,
    extra_mask: ExtraMask = None,
) -> torch.Tensor:
    """Masked softmax attention.

    Args:
        q: (B, H, nq, hd) queries in group order.
        k: (B, H, nk, hd) keys.
        v: (B, H, nk, hd) values.
        mask: the group's mask.
        beta: sharpening factor multiplying the logits (finite, > 0).
        scale: logit scale (default ``hd ** -0.5``).
        kernel: overrides ``mask.kernel``.
        extra_mask: optional position-level mask ``(q_index, k_index) -> bool`` (group-local
            indices) ANDed with the class mask, e.g. a spatial window.

    Returns:
        (B, H, nq, hd); a row is non-finite exactly when it may read a non-finite key or
        value or its query is non-finite (see the module docstring).

    Raises:
        CanvasValidationError: ``beta`` is not a finite number > 0, an unknown kernel, flex
            asked to train on the CPU, or ``"dense"`` over a group beyond the dense mask budget.

    """
    scale = (q.shape[-1] ** -0.5 if scale is None else scale) * check_beta(beta, "softmax_attention")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    pairs = mask.num_queries * mask.num_keys
    name = resolve_kernel(kernel or mask.kernel, q.device, needs_grad, pairs, extra_mask is not None)
    if name == "dense":
        run = functools.partial(_dense, mask=mask, scale=scale, extra_mask=extra_mask)
    elif name == "partitioned":
        run = functools.partial(partitioned_attention, mask=mask, scale=scale)
    elif name == "flex":
        run = functools.partial(_flex, mask=mask, scale=scale, extra_mask=extra_mask)
    else:
        run = functools.partial(_tiled, mask=mask, scale=scale, extra_mask=extra_mask)
    return _contained(run, q, k, v, mask, extra_mask)


def _dense(q, k, v, mask: AttentionMask, scale: float, extra_mask: ExtraMask) -> torch.Tensor:
    bias, valid = mask.dense_bias(q.device, q.dtype, extra_mask)  # built once per device and dtype
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None, None], scale=scale)
    return out * valid[:, None]


def _blocks(x: torch.Tensor, bs: int, n_blocks: int) -> torch.Tensor:
    """(B, H, n, hd) -> (B*H, n_blocks, bs*hd), zero-padded: one row per block.

    Blocks are then gathered with advanced indexing on dim 1, which copies whole rows
    (``index_select`` on an inner dim is an order of magnitude slower on CPU).
    """
    pad = n_blocks * bs - x.shape[2]
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(x.shape[0] * x.shape[1], n_blocks, bs * x.shape[3])


def _assemble(outs: list[torch.Tensor], plan: TilePlan, like: torch.Tensor) -> torch.Tensor:
    """Put each bucket's (B*H, nb, bs*hd) output back in query-block order -> ``like``'s (B, H, nq, hd)."""
    B, H, nq, hd = like.shape
    if not outs:
        return like.new_zeros(like.shape)
    out = torch.cat(outs, dim=1)
    if not _in_order(plan, out.shape[1]):  # skipped blocks or out of order
        zero = outs[0].new_zeros(B * H, 1, outs[0].shape[2])
        out = torch.cat([out, zero], dim=1)[:, plan.assembly]  # (B*H, nqb, bs*hd)
    return out.reshape(B, H, plan.n_q_blocks * plan.block_size, hd)[:, :, :nq]


def _in_order(plan: TilePlan, computed_blocks: int) -> bool:
    """Tell whether the buckets' outputs already come in query-block order, none missing."""
    assembly = plan.assembly
    if assembly.numel() != computed_blocks:  # a block without keys (its output is the zero block)
        return False
    return bool(assembly.numel() == 0 or (assembly[0] == 0 and (assembly.diff() == 1).all()))


def _windows(qb, kb, vb, bucket) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B*H, nb, bs*hd) query blocks and (B*H, nb, K, bs*hd) key/value windows of a bucket."""
    nb = bucket.q_blocks.numel()
    if bucket.band is not None:  # slices: cheap backward, no scatter-add
        q0, k0s = bucket.band
        qw = qb[:, q0 : q0 + nb]
        kw = torch.stack([kb[:, s : s + nb] for s in k0s], dim=2)
        vw = torch.stack([vb[:, s : s + nb] for s in k0s], dim=2)
        return qw, kw, vw
    return qb[:, bucket.q_blocks], kb[:, bucket.k_blocks], vb[:, bucket.k_blocks]


def _window_shapes(qw, kw, vw, dims: tuple[int, int, int, int, int]) -> tuple[torch.Tensor, ...]:
    """Windows as SDPA batches: (BH, nb, bs, hd) queries and (BH, nb, K*bs, hd) keys/values."""
    bh, nb, bs, kn, hd = dims
    return qw.reshape(bh, nb, bs, hd), kw.reshape(bh, nb, kn * bs, hd), vw.reshape(bh, nb, kn * bs, hd)


def _tiled(q, k, v, mask: AttentionMask, scale: float, extra_mask: ExtraMask) -> torch.Tensor:
    B, H, nq, hd = q.shape
    bs = mask.choose_block_size() if extra_mask is None else 64
    plan = mask.device_tiles(bs, q.device, q.dtype, extra_mask)  # biases built once per device and dtype
    qb = _blocks(q, bs, plan.n_q_blocks)  # (B*H, nqb, bs*hd)
    kb = _blocks(k, bs, plan.n_k_blocks)  # (B*H, nkb, bs*hd)
    vb = _blocks(v, bs, plan.n_k_blocks)
    outs = []
    for bucket in plan.buckets:
        nb, kn = bucket.k_blocks.shape
        bias = bucket.bias  # (nb, bs or 1, K*bs) or None
        if kn == plan.n_k_blocks and bucket.band is None:
            # Every key block is in every window: attend the whole key sequence instead of
            # copying it once per query block (dense topologies would otherwise blow up).
            kw = kb.view(B * H, kn * bs, hd)
            vw = vb.view(B * H, kn * bs, hd)
            # 4-D inputs and mask: SDPA's fused CPU kernel takes them (a 3-D mask falls back to math).
            if bias is not None:
                rows = bs if bias.shape[1] == bs or nb > 1 else 1  # one shared row broadcasts as is
                bias = bias.expand(nb, rows, kn * bs).reshape(1, 1, nb * rows, kn * bs)
            qw = qb[:, bucket.q_blocks].reshape(B * H, 1, nb * bs, hd)
            o = F.scaled_dot_product_attention(qw, kw[:, None], vw[:, None], attn_mask=bias, scale=scale)
        else:
            qw, kw, vw = _windows(qb, kb, vb, bucket)  # each query block's key window
            qw, kw, vw = _window_shapes(qw, kw, vw, (B * H, nb, bs, kn, hd))
            bias = None if bias is None else bias[None]  # (1, nb, bs or 1, K*bs): 4-D keeps the fused kernel
            o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=bias, scale=scale)
        o = o.reshape(B * H, nb, bs, hd)
        if bucket.row_valid is not None:
            o = o * bucket.row_valid[..., None]
        outs.append(o.reshape(B * H, nb, bs * hd))
    return _assemble(outs, plan, q)


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, mask: AttentionMask, scale: float, extra_mask: ExtraMask) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    device = q.device
    block_mask = mask.block_mask(device, extra_mask)  # built once per device (and extra mask)
    score_mod = mask.score_mod(device, q.dtype)
    valid = mask.cache.get(("row_has_key", str(device)), lambda: mask.row_has_key.to(device))
    if device.type == "cpu" and not torch.is_grad_enabled():
        q, k, v = q.detach(), k.detach(), v.detach()  # flex refuses inputs that require grad on CPU
    if device.type == "cuda":
        out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    else:
        with warnings.catch_warnings():
            # eager flex is chosen on purpose on the CPU (a reference path: compiling costs tens of
            # seconds per shape and the CPU kernels are faster anyway); torch's advice to compile is noise here
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            out = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out * valid[:, None]


Normalizer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    normalize: Normalizer,
    beta: float = 1.0,
    scale: float | None = None,
    kernel: str | None = None,
    extra_mask: ExtraMask = None,
) -> torch.Tensor:
    """Attention with explicit scores and a custom normaliser (sigmoid, top-k, ...).

    ``normalize(scores, weights)`` receives logits ``beta * q.k * scale`` (..., nq, nk) and the
    connection weights (0 where blocked) of the same shape, and returns the mixing weights;
    it must give 0 wherever the weight is 0. Runs on the packed tiles (memory grows with the
    allowed tiles) or, for ``kernel="dense"``, on the full (nq, nk) view.

    Returns:
        (B, H, nq, hd); non-finite values are contained as in :func:`softmax_attention`.

    Raises:
        CanvasValidationError: ``beta`` is not a finite number > 0, or ``"dense"`` over a group
            beyond the dense mask budget.

    """
    scale = (q.shape[-1] ** -0.5 if scale is None else scale) * check_beta(beta, "score_attention")
    run = functools.partial(_scored, mask=mask, normalize=normalize, scale=scale, kernel=kernel, extra_mask=extra_mask)
    return _contained(run, q, k, v, mask, extra_mask)


def _scored(q, k, v, mask: AttentionMask, normalize: Normalizer, scale: float, kernel, extra_mask) -> torch.Tensor:
    name = kernel or mask.kernel
    if name == "dense":
        key = ("dense_weights", extra_mask, str(q.device), q.dtype)
        weights = mask.cache.get(key, lambda: _dense_weights(mask, extra_mask).to(q.device, q.dtype))
        logits = (q @ k.transpose(-1, -2)) * scale
        return normalize(logits, weights) @ v
    B, H, nq, hd = q.shape
    bs = 64
    extra = extra_mask if extra_mask is not None else _ALL
    plan = mask.device_tiles(bs, q.device, q.dtype, extra)
    qb, kb, vb = _blocks(q, bs, plan.n_q_blocks), _blocks(k, bs, plan.n_k_blocks), _blocks(v, bs, plan.n_k_blocks)
    outs = []
    for i, bucket in enumerate(plan.buckets):
        nb, kn = bucket.k_blocks.shape
        qw, kw, vw = _windows(qb, kb, vb, bucket)
        qw, kw, vw = _window_shapes(qw, kw, vw, (B * H, nb, bs, kn, hd))
        key = ("tile_weights", bs, extra, str(q.device), q.dtype, i)
        weights = mask.cache.get(key, lambda b=bucket: b.bias.exp() * b.row_valid[..., None])  # (nb, bs, K*bs)
        logits = (qw @ kw.transpose(-1, -2)) * scale
        o = normalize(logits, weights) @ vw
        outs.append(o.reshape(B * H, nb, bs * hd))
    return _assemble(outs, plan, q)


def _dense_weights(mask: AttentionMask, extra_mask: ExtraMask) -> torch.Tensor:
    """(nq, nk) connection weights ANDed with ``extra_mask`` (0 where blocked)."""
    weights = mask.dense_weights()
    if extra_mask is not None:
        weights = weights * extra_mask(torch.arange(mask.num_queries)[:, None], torch.arange(mask.num_keys)[None, :])
    return weights


def _all_keys(q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
    """Extra mask that allows everything (forces explicit per-pair weights in every tile)."""
    return torch.ones(torch.broadcast_shapes(q_idx.shape, k_idx.shape), dtype=torch.bool)


_ALL: ExtraMask = _all_keys
