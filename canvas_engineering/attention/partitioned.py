"""The ``"partitioned"`` kernel: dense attention per query partition, exactly the pairs read.

Runs a :class:`~canvas_engineering.compilation.partition_plan.PartitionPlan`: each large
partition is one fused SDPA call over its query rows (a slice when contiguous) and the keys
it reads (a slice or one gather); small partitions of one shape are batched into one call.
On the CPU the forward and backward call torch's fused flash-attention kernels directly
inside one ``autograd.Function``: slices stay views, and key gradients are added into one
buffer instead of autograd materialising a full-size gradient per slice (which cost more
than the attention itself on irregular canvases). Elsewhere the same loop runs through
``F.scaled_dot_product_attention`` and autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from canvas_engineering.compilation.attention_mask import AttentionMask
from canvas_engineering.compilation.partition_plan import PartitionBatch, PartitionPlan, QueryPartition

__all__ = ["partitioned_attention"]


def _cpu_flash() -> tuple[object, object] | None:
    ops = torch.ops.aten
    try:
        return (
            ops._scaled_dot_product_flash_attention_for_cpu.default,
            ops._scaled_dot_product_flash_attention_for_cpu_backward.default,
        )
    except (AttributeError, RuntimeError):  # an older torch without the ops: the autograd path runs
        return None


_FLASH = _cpu_flash()


def partitioned_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, scale: float
) -> torch.Tensor:
    """``softmax(scale * q.k + log w) v`` over each query's allowed keys; 0 for a query with none.

    Shapes: q (B, H, nq, hd), k and v (B, H, nk, hd) -> (B, H, nq, hd).
    """
    plan = mask.device_partitions(q.device, q.dtype)
    if q.device.type == "cpu" and _FLASH is not None and q.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return _CPUPartitioned.apply(q, k, v, plan, scale)
    return _autograd_partitioned(q, k, v, plan, scale)


def _rows(x: torch.Tensor, span: tuple[int, int] | None, index: torch.Tensor) -> torch.Tensor:
    return x[:, :, span[0] : span[1]] if span is not None else x.index_select(2, index)


def _keys(x: torch.Tensor, runs: tuple[tuple[int, int], ...]) -> torch.Tensor:
    if len(runs) == 1:
        return x[:, :, runs[0][0] : runs[0][1]]
    return torch.cat([x[:, :, a:b] for a, b in runs], dim=2)


def _add_keys(buf: torch.Tensor, runs: tuple[tuple[int, int], ...], rows: torch.Tensor) -> None:
    at = 0
    for a, b in runs:
        buf[:, :, a:b] += rows[:, :, at : at + b - a]
        at += b - a


def _batched(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, n, hd) rows at ``index`` (P, m) -> (B, H * P, m, hd)."""
    B, H, _, hd = x.shape
    P, m = index.shape
    return x.index_select(2, index.reshape(-1)).view(B, H * P, m, hd)


def _batch_bias(batch: PartitionBatch, heads: int) -> torch.Tensor | None:
    return None if batch.bias is None else batch.bias.repeat(heads, 1, 1)[None]


def _single_bias(part: QueryPartition) -> torch.Tensor | None:
    return None if part.bias is None else part.bias[None, None]


def _unbatch(o: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H * P, m, hd) -> (B, H, P * m, hd)."""
    B, _, m, hd = o.shape
    return o.reshape(B, heads, -1, hd)


def _write_rows(buf: torch.Tensor, span: tuple[int, int] | None, index: torch.Tensor, rows: torch.Tensor) -> None:
    if span is not None:
        buf[:, :, span[0] : span[1]] = rows
    else:
        buf.index_copy_(2, index, rows)


class _CPUPartitioned(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: PartitionPlan, scale: float):  # noqa: ANN001, ANN205
        flash, _ = _FLASH
        H = q.shape[1]
        if plan.batches or any(p.q_span is None for p in plan.singles):
            # gathers of rows are memcpys of whole rows only on contiguous tensors
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = q.new_empty(q.shape) if plan.covers_all else q.new_zeros(q.shape)  # rows are written once
        lse = []
        for part in plan.singles:
            qs = _rows(q, part.q_span, part.q_index)
            ks, vs = _keys(k, part.k_runs), _keys(v, part.k_runs)
            o, m = flash(qs, ks, vs, attn_mask=_single_bias(part), scale=scale)
            if part.q_span is not None:
                out[:, :, part.q_span[0] : part.q_span[1]] = o
            else:
                out.index_copy_(2, part.q_index, o)
            lse.append(m)
        gathered = []  # small batches keep their gathered rows: backward need not gather again
        for batch in plan.batches:
            qs, ks, vs = _batched(q, batch.q_index), _batched(k, batch.k_index), _batched(v, batch.k_index)
            o, m = flash(qs, ks, vs, attn_mask=_batch_bias(batch, H), scale=scale)
            out.index_copy_(2, batch.q_index.reshape(-1), _unbatch(o, H))
            lse.append(m)
            gathered += [qs, ks, vs, o]
        ctx.plan, ctx.scale = plan, scale
        ctx.save_for_backward(q, k, v, out, *lse, *gathered)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        _, flash_backward = _FLASH
        q, k, v, out, *rest = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        count = len(plan.singles) + len(plan.batches)
        lse, gathered = rest[:count], rest[count:]
        H = q.shape[1]
        dq = torch.empty_like(q) if plan.covers_all else torch.zeros_like(q)  # query rows are disjoint
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for part, m in zip(plan.singles, lse, strict=False):
            qs = _rows(q, part.q_span, part.q_index)
            ks, vs = _keys(k, part.k_runs), _keys(v, part.k_runs)
            os, gs = _rows(out, part.q_span, part.q_index), _rows(grad, part.q_span, part.q_index)
            a, b, c = flash_backward(gs, qs, ks, vs, os, m, 0.0, False, attn_mask=_single_bias(part), scale=scale)
            _write_rows(dq, part.q_span, part.q_index, a)
            _add_keys(dk, part.k_runs, b)
            _add_keys(dv, part.k_runs, c)
        for i, (batch, m) in enumerate(zip(plan.batches, lse[len(plan.singles) :], strict=True)):
            qs, ks, vs, os = gathered[4 * i : 4 * i + 4]
            gs = _batched(grad, batch.q_index)
            a, b, c = flash_backward(gs, qs, ks, vs, os, m, 0.0, False, attn_mask=_batch_bias(batch, H), scale=scale)
            dq.index_copy_(2, batch.q_index.reshape(-1), _unbatch(a, H))
            dk.index_add_(2, batch.k_index.reshape(-1), _unbatch(b, H))
            dv.index_add_(2, batch.k_index.reshape(-1), _unbatch(c, H))
        return dq, dk, dv, None, None


def _autograd_partitioned(q, k, v, plan: PartitionPlan, scale: float) -> torch.Tensor:
    H = q.shape[1]
    pieces, index = [], []
    for part in plan.singles:
        qs = _rows(q, part.q_span, part.q_index)
        ks, vs = _keys(k, part.k_runs), _keys(v, part.k_runs)
        pieces.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=_single_bias(part), scale=scale))
        index.append(part.q_index)
    for batch in plan.batches:
        qs, ks, vs = _batched(q, batch.q_index), _batched(k, batch.k_index), _batched(v, batch.k_index)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=_batch_bias(batch, H), scale=scale)
        pieces.append(_unbatch(o, H))
        index.append(batch.q_index.reshape(-1))
    out = q.new_zeros(q.shape)
    if not pieces:
        return out
    return out.index_copy(2, torch.cat(index), torch.cat(pieces, dim=2))
