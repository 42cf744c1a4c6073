"""The partitioned kernel (and the other kernels) against an explicit reference on random
irregular topologies: several regions, periods, temporal offsets, weights other than 1,
rows with no allowed key; forward and gradients; and the plan's own invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compiler_properties import layouts_and_topologies

import canvas_engineering.compilation.partition_plan as partition_plan
from canvas_engineering import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_engineering.attention.kernels import softmax_attention
from canvas_engineering.compilation.compiler import compile_topology

#: plan settings: the defaults; every partition alone (no merging, no batching); no merging, all batched
SETTINGS = {
    "default": {},
    "singles": {"_CALL": 0.0, "_KEY_ROW": 0.0, "BATCH_PAIRS": 0},
    "batched": {"_CALL": 0.0, "_KEY_ROW": 0.0, "BATCH_PAIRS": 1 << 40},
    "merged": {"_CALL": 1e12},
}


def reference(q, k, v, weights: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale q.k + log w) v`` over allowed keys; 0 on rows with none."""
    logits = (q @ k.transpose(-1, -2)) * scale + weights.log()
    has_key = (weights > 0).any(1)
    probs = torch.softmax(logits.masked_fill(~has_key[:, None], 0.0), dim=-1) * has_key[:, None]
    return probs @ v


def _inputs(mask, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape_q, shape_k = (2, 2, mask.num_queries, 8), (2, 2, mask.num_keys, 8)
    q = torch.randn(shape_q, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(shape_k, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(shape_k, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


def _check_against_reference(mask, kernel: str, seed: int, beta: float) -> None:
    q, k, v = _inputs(mask, seed, torch.float32)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = softmax_attention(q, k, v, mask, beta=beta, kernel=kernel)
    ref = reference(q64, k64, v64, mask.dense_weights().double(), 8**-0.5 * beta)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    if out.requires_grad:  # a group without any allowed pair may return constant zeros
        (out * probe).sum().backward()
    (ref * probe.double()).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        got = torch.zeros_like(want) if got is None else got.double()
        torch.testing.assert_close(got, want, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("setting", list(SETTINGS))
@settings(max_examples=25, deadline=None)
@given(case=layouts_and_topologies(), seed=st.integers(0, 2**16), beta=st.sampled_from([0.5, 1.0, 3.0]))
def test_partitioned_matches_reference(setting: str, case, seed: int, beta: float) -> None:
    layout, topo = case
    plan = compile_topology(layout, topo)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SETTINGS[setting].items():
            mp.setattr(partition_plan, name, value)
        mask = plan.group_mask(range(len(topo.connections)))
        _check_against_reference(mask, "partitioned", seed, beta)


@settings(max_examples=15, deadline=None)
@given(case=layouts_and_topologies(), seed=st.integers(0, 2**16), kernel=st.sampled_from(["tiled", "dense"]))
def test_other_kernels_match_reference_in_partition_order(case, seed: int, kernel: str) -> None:
    layout, topo = case
    mask = compile_topology(layout, topo).group_mask(range(len(topo.connections)))
    _check_against_reference(mask, kernel, seed, 1.0)


@settings(max_examples=40, deadline=None)
@given(case=layouts_and_topologies())
def test_plan_covers_every_query_with_keys_once_and_reads_exactly_its_keys(case) -> None:
    layout, topo = case
    mask = compile_topology(layout, topo).group_mask(range(len(topo.connections)))
    plan = mask.partitions()
    allowed = mask.dense_allowed()
    parts = [(p.q_index, p.k_index, p.bias) for p in plan.singles]
    for b in plan.batches:
        for i in range(b.q_index.shape[0]):
            parts.append((b.q_index[i], b.k_index[i], None if b.bias is None else b.bias[i]))
    covered = torch.cat([q for q, _, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
    assert covered.numel() == covered.unique().numel(), "a query row in two partitions"
    assert set(covered.tolist()) == set(allowed.any(1).nonzero().squeeze(1).tolist())
    computed = 0
    for q_index, k_index, bias in parts:
        block = allowed[q_index]
        # every allowed key of these queries is read, and every key read is allowed to one of them
        assert not block[:, ~torch.isin(torch.arange(mask.num_keys), k_index)].any()
        assert block[:, k_index].any(0).all()
        if bias is None:
            assert block[:, k_index].all()
        computed += q_index.numel() * k_index.numel()
    assert computed == plan.computed_pairs >= mask.num_allowed_pairs
    assert torch.equal(plan.order, torch.arange(mask.num_queries))  # the compiler already ordered them


def _robot_like(T: int = 8, side: int = 16) -> tuple[CanvasLayout, CanvasTopology]:
    """A robot-shaped canvas: video, an action row, proprio, one reward cell, unassigned cells."""
    layout = CanvasLayout(
        T=T, H=side, W=side, d_model=16,
        regions={
            "visual": (0, T, 0, side - 2, 0, side),
            "action": (0, T, side - 2, side - 1, 0, 4),
            "proprio": (0, T, side - 1, side, 0, 2),
            "reward": (0, T, side - 1, side, 2, 3),
        },
    )
    c = Connection
    topology = CanvasTopology([
        c("visual", "visual", t_src=0, t_dst=0), c("visual", "visual", t_src=0, t_dst=-1),
        c("visual", "action", t_src=0, t_dst=-1), c("action", "action"),
        c("action", "visual", t_src=0, t_dst=0), c("action", "proprio", t_src=0, t_dst=-1),
        c("proprio", "proprio", t_src=0, t_dst=0), c("reward", "visual", weight=0.5),
        c("reward", "action", t_src=0, t_dst=0, weight=2.0),
    ])
    return layout, topology


def test_wide_reader_is_merged_into_one_partition_and_rows_of_one_weight_need_no_bias() -> None:
    layout, topo = _robot_like()
    mask = compile_topology(layout, topo).group_mask(range(len(topo.connections)))
    plan = mask.partitions()
    reward = layout.region_indices("reward")
    parts = {tuple(sorted(mask.q_positions[p.q_index].tolist())): p for p in plan.singles}
    for b in plan.batches:
        for i in range(b.q_index.shape[0]):
            parts[tuple(sorted(mask.q_positions[b.q_index[i]].tolist()))] = b
    # the reward cells of every frame read the whole video: one partition, one key gather
    assert tuple(sorted(reward.tolist())) in parts
    visual_rows = [p for p in plan.singles if set(mask.q_positions[p.q_index].tolist()) <= set(
        layout.region_indices("visual").tolist())]
    assert visual_rows and all(p.bias is None for p in visual_rows)
    assert all(len(p.k_runs) <= 2 for p in visual_rows)


@pytest.mark.parametrize("kernel", ["partitioned", "tiled", "dense"])
def test_canvas_attention_module_agrees_across_kernels_with_gradients(kernel: str) -> None:
    layout, topo = _robot_like()
    torch.manual_seed(0)
    attn = CanvasAttention(layout, topo, d_model=16, n_heads=2, kernel="dense")
    x = torch.randn(2, layout.num_positions, 16, requires_grad=True)
    ref = attn(x)
    ref.square().sum().backward()
    ref_grad = x.grad.clone()
    x.grad = None
    attn.set_kernel(kernel)
    out = attn(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_partitioned_kernel_runs_half_precision_tokens() -> None:
    layout, topo = _robot_like()
    mask = compile_topology(layout, topo).group_mask(range(len(topo.connections)))
    q, k, v = (t.detach().to(torch.bfloat16) for t in _inputs(mask, 0))
    out = softmax_attention(q, k, v, mask, kernel="partitioned")
    ref = reference(q.double(), k.double(), v.double(), mask.dense_weights().double(), 8**-0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


@settings(max_examples=40, deadline=None)
@given(case=layouts_and_topologies())
def test_plan_derived_for_the_reordered_mask_equals_a_fresh_build(case) -> None:
    layout, topo = case
    mask = compile_topology(layout, topo).group_mask(range(len(topo.connections)))
    derived = mask.partitions()
    fresh = partition_plan.build_partition_plan(mask.class_table, mask.q_classes, mask.k_classes)
    assert (derived.covers_all, derived.computed_pairs) == (fresh.covers_all, fresh.computed_pairs)
    assert torch.equal(derived.order, fresh.order)
    assert len(derived.singles) == len(fresh.singles) and len(derived.batches) == len(fresh.batches)
    for a, b in zip(derived.singles, fresh.singles, strict=True):
        assert torch.equal(a.q_index, b.q_index) and torch.equal(a.k_index, b.k_index)
        assert (a.q_span, a.k_runs) == (b.q_span, b.k_runs)
        assert (a.bias is None) == (b.bias is None)
        if a.bias is not None:
            torch.testing.assert_close(a.bias, b.bias, atol=0, rtol=0)
    for a, b in zip(derived.batches, fresh.batches, strict=True):
        assert torch.equal(a.q_index, b.q_index) and torch.equal(a.k_index, b.k_index)
        assert (a.bias is None) == (b.bias is None)
        if a.bias is not None:
            torch.testing.assert_close(a.bias, b.bias, atol=0, rtol=0)
