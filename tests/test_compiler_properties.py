"""Property tests: ``compile_topology`` against a slow, literal reference of the topology semantics.

``reference_mask`` below re-implements the module docstring of ``canvas_engineering.declare.topology``
word for word with plain Python loops over every (query position, key position) pair and
every reference frame. It shares no code with the compiler (which works on class tables),
so agreement on random layouts and topologies is strong evidence that both are right.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_engineering import (
    CanvasLayout,
    CanvasTopology,
    Connection,
    RegionSpec,
    TemporalFill,
    compile_topology,
)

# ---------------------------------------------------------------------------------------
# The naive reference
# ---------------------------------------------------------------------------------------


def _position_info(layout: CanvasLayout) -> list[tuple[str | None, int | None]]:
    """(region name, real time) of every flat position ``t*H*W + h*W + w``; (None, None) if unassigned."""
    info: list[tuple[str | None, int | None]] = []
    for n in range(layout.T * layout.H * layout.W):
        t, hw = divmod(n, layout.H * layout.W)
        h, w = divmod(hw, layout.W)
        found: tuple[str | None, int | None] = (None, None)
        for name, spec in layout.regions.items():
            t0, t1, h0, h1, w0, w1 = spec.bounds
            if t0 <= t < t1 and h0 <= h < h1 and w0 <= w < w1:
                found = (name, t0 + (t - t0) * spec.period)
        info.append(found)
    return info


def _dst_share(spec: RegionSpec, rho: int, key_time: int, conn: Connection) -> float:
    """Share of the connection weight the dst frame at real time ``key_time`` gets when reading ``rho``."""
    frames = [spec.bounds[0] + i * spec.period for i in range(spec.bounds[1] - spec.bounds[0])]
    if rho in frames:  # a dst frame at exactly rho
        return 1.0 if key_time == rho else 0.0
    if not frames[0] <= rho < frames[-1] + spec.period:  # outside the span: nothing is read
        return 0.0
    before = max(f for f in frames if f < rho)
    later = [f for f in frames if f > rho]
    after = min(later) if later else None
    if conn.temporal_fill is TemporalFill.DROP:
        return 0.0
    if conn.temporal_fill is TemporalFill.HOLD:
        return 1.0 if key_time == before else 0.0
    # INTERPOLATE: w_i proportional to d_i ** -order over the frames just before and just after
    # rho; past the last frame only the earlier one takes part.
    around = [before] if after is None else [before, after]
    raw = {f: float(abs(rho - f)) ** -float(conn.interpolation_order) for f in around}
    return raw.get(key_time, 0.0) / sum(raw.values())


def _pair_weight(layout: CanvasLayout, conn: Connection, q_time: int, k_time: int) -> float:
    if conn.t_src is None and conn.t_dst is None:
        return conn.weight
    best = 0.0
    for ref in range(layout.T):
        if conn.t_src is not None and q_time != ref + conn.t_src:
            continue
        if conn.t_dst is None:
            best = max(best, conn.weight)
            continue
        rho = ref + conn.t_dst
        if not 0 <= rho < layout.T:
            continue
        best = max(best, conn.weight * _dst_share(layout.regions[conn.dst], rho, k_time, conn))
    return best


def reference_mask(layout: CanvasLayout, topology: CanvasTopology) -> torch.Tensor:
    """(N, N) float64: the largest weight with which query i may attend key j, 0 if blocked."""
    info = _position_info(layout)
    n = len(info)
    out = [[0.0] * n for _ in range(n)]
    for conn in topology.connections:
        for q in range(n):
            q_region, q_time = info[q]
            if q_region != conn.src:
                continue
            for k in range(n):
                k_region, k_time = info[k]
                if k_region != conn.dst:
                    continue
                out[q][k] = max(out[q][k], _pair_weight(layout, conn, q_time, k_time))
    return torch.tensor(out, dtype=torch.float64).reshape(n, n)


def reference_tiles(allowed: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(nonempty, full) tiles of a dense bool mask, with plain loops. Tiles touching a short
    last block are never full (the library's convention)."""
    n = allowed.shape[0]
    nb = -(-n // block_size)
    nonempty = torch.zeros(nb, nb, dtype=torch.bool)
    full = torch.zeros(nb, nb, dtype=torch.bool)
    for i in range(nb):
        for j in range(nb):
            tile = allowed[i * block_size : (i + 1) * block_size, j * block_size : (j + 1) * block_size]
            nonempty[i, j] = bool(tile.any())
            whole = tile.shape == (block_size, block_size)
            full[i, j] = whole and bool(tile.all())
    return nonempty, full


# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn, slow: bool = False) -> CanvasLayout:
    """Random layouts: 1..3 regions in slabs along h or w, each over a random frame range
    with a random period. ``slow=True`` favours multi-frame regions with period 2 or 3, whose
    gaps are where the temporal fill modes and interpolation shares come into play."""
    # sampled_from draws uniformly (st.integers favours small values)
    T = draw(st.sampled_from([4, 5] if slow else [1, 2, 3, 4, 5, 5, 5]))
    H = draw(st.sampled_from([1, 2, 3, 3]))
    W = draw(st.sampled_from([1, 2, 3, 3]))
    axis = draw(st.sampled_from("hw"))
    length = H if axis == "h" else W
    k = draw(st.sampled_from(range(min(3, length), 0, -1)))
    cuts = draw(st.lists(st.integers(1, length - 1), min_size=k - 1, max_size=k - 1, unique=True)) if k > 1 else []
    cuts = sorted(cuts)
    edges = [0, *cuts, length]
    names = draw(st.permutations(["r0", "r1", "r2"]))[:k]  # random declaration order
    regions = {}
    for name, lo, hi in zip(names, edges[:-1], edges[1:], strict=False):
        if slow and draw(st.sampled_from([True, True, False])):  # 2..3 frames, period >= 2 (T >= 4)
            period = draw(st.sampled_from([3, 3, 2]))  # period 3 gaps give unequal distances
            t0 = draw(st.sampled_from(range(T - period)))
            frames = draw(st.sampled_from(range(2, (T - 1 - t0) // period + 2)))
        else:
            t0 = draw(st.sampled_from(range(T)))
            frames = draw(st.sampled_from(range(1, T - t0 + 1)))
            max_period = 3 if frames == 1 else min(3, (T - 1 - t0) // (frames - 1))
            period = draw(st.sampled_from(range(max_period, 0, -1)))
        assert 1 <= period <= 3
        assert t0 + (frames - 1) * period < T
        if axis == "h":
            bounds = (t0, t0 + frames, lo, hi, 0, W)
        else:
            bounds = (t0, t0 + frames, 0, H, lo, hi)
        regions[name] = RegionSpec(bounds=bounds, period=period)
    return CanvasLayout(T=T, H=H, W=W, d_model=4, regions=regions)


_OFFSETS = [None, -2, -1, 0, 1]


@st.composite
def _layouts_and_topologies(draw: st.DrawFn, slow: bool) -> tuple[CanvasLayout, CanvasTopology]:
    layout = draw(layouts(slow=slow))
    names = list(layout.regions)
    # slow: mostly frame-constrained connections that interpolate
    offsets = st.sampled_from(_OFFSETS[1:] * 3 + [None] if slow else _OFFSETS)
    fills = [TemporalFill.DROP, TemporalFill.HOLD] + [TemporalFill.INTERPOLATE] * (4 if slow else 1)
    conns = draw(
        st.lists(
            st.builds(
                Connection,
                src=st.sampled_from(names),
                dst=st.sampled_from(names),
                weight=st.sampled_from([0.5, 1.0, 2.0]),
                t_src=offsets,
                t_dst=offsets,
                temporal_fill=st.sampled_from(fills),
                interpolation_order=st.sampled_from([0, 1, 2]),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return layout, CanvasTopology(conns)


def layouts_and_topologies() -> st.SearchStrategy[tuple[CanvasLayout, CanvasTopology]]:
    """Half general cases, half cases rich in slow regions and interpolating connections."""
    return st.one_of(_layouts_and_topologies(slow=False), _layouts_and_topologies(slow=True))


# ---------------------------------------------------------------------------------------
# The reference itself, on hand-checked cases (so a wrong reference cannot hide a bug)
# ---------------------------------------------------------------------------------------


def _one_column(T: int, dst: RegionSpec, src_frames: tuple[int, int] | None = None) -> CanvasLayout:
    """H=1, W=2: region 'q' in column 0 (one position per frame), 'k' = dst in column 1."""
    t0, t1 = src_frames or (0, T)
    return CanvasLayout(T=T, H=1, W=2, d_model=4, regions={"q": (t0, t1, 0, 1, 0, 1), "k": dst})


def _frame_matrix(layout: CanvasLayout, mask: torch.Tensor) -> torch.Tensor:
    """(frames of q, frames of k) block of an (N, N) mask for the ``_one_column`` layouts."""
    return mask[layout.region_indices("q")][:, layout.region_indices("k")]


def test_reference_interpolates_by_inverse_distance() -> None:
    # dst 'k' has period 3 over frames 0, 3 (canvas frames 0, 1); q reads k at its own real time.
    layout = _one_column(5, RegionSpec((0, 2, 0, 1, 1, 2), period=3))
    conn = Connection("q", "k", weight=2.0, t_src=0, t_dst=0, temporal_fill="interpolate", interpolation_order=1)
    got = _frame_matrix(layout, reference_mask(layout, CanvasTopology([conn])))
    # q at real 1: d(0)=1, d(3)=2 -> shares 2/3, 1/3; real 2: 1/3, 2/3; real 4 is past the
    # last frame (3) but within period: only frame 3; real 0 and 3 are exact.
    expected = 2.0 * torch.tensor(
        [[1.0, 0.0], [2 / 3, 1 / 3], [1 / 3, 2 / 3], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected)
    plan = compile_topology(layout, CanvasTopology([conn]))
    torch.testing.assert_close(_frame_matrix(layout, plan.dense_weights()), expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("fill", "order", "expected"),
    [
        ("drop", 1, [[1, 0], [0, 0], [0, 0], [0, 1], [0, 0]]),
        ("hold", 1, [[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]]),
        ("interpolate", 0, [[1, 0], [0.5, 0.5], [0.5, 0.5], [0, 1], [0, 1]]),
        ("interpolate", 2, [[1, 0], [0.8, 0.2], [0.2, 0.8], [0, 1], [0, 1]]),
    ],
)
def test_reference_fill_modes(fill: str, order: int, expected: list[list[float]]) -> None:
    layout = _one_column(5, RegionSpec((0, 2, 0, 1, 1, 2), period=3))
    topo = CanvasTopology([Connection("q", "k", t_src=0, t_dst=0, temporal_fill=fill, interpolation_order=order)])
    want = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(_frame_matrix(layout, reference_mask(layout, topo)), want)
    got = _frame_matrix(layout, compile_topology(layout, topo).dense_weights())
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=0)


def test_reference_reads_nothing_outside_the_span() -> None:
    # dst 'k' starts at real frame 2 (period 2: frames 2, 4 -> span [2, 6)); q covers 0..5.
    layout = CanvasLayout(
        T=6, H=1, W=2, d_model=4,
        regions={"q": (0, 6, 0, 1, 0, 1), "k": RegionSpec((2, 4, 0, 1, 1, 2), period=2)},
    )
    topo = CanvasTopology([Connection("q", "k", t_src=0, t_dst=0, temporal_fill="hold")])
    # the k positions sit at canvas frames 2 and 3 (real 2 and 4)
    expected = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float64)
    torch.testing.assert_close(_frame_matrix(layout, reference_mask(layout, topo)), expected)
    got = _frame_matrix(layout, compile_topology(layout, topo).dense_weights())
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=0)


def test_reference_offsets_and_none_ends() -> None:
    layout = _one_column(4, (0, 4, 0, 1, 1, 2))
    cases = {
        # t_src=0, t_dst=-1: q at t reads k at t-1
        (0, -1): [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]],
        # t_src=1, t_dst=None: q at real ref+1 for some ref in [0, T) -> q frames 1..3 read every k
        (1, None): [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
        # t_src=None, t_dst=-2: every q reads k at ref-2 for ref in [0, T) -> k frames 0, 1
        (None, -2): [[1, 1, 0, 0]] * 4,
        # t_src=-2, t_dst=1: ref = t+2 in [0,4), rho = ref+1 = t+3 < 4 -> only q0 reads k3
        (-2, 1): [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    }
    for (t_src, t_dst), expected in cases.items():
        topo = CanvasTopology([Connection("q", "k", t_src=t_src, t_dst=t_dst)])
        want = torch.tensor(expected, dtype=torch.float64)
        torch.testing.assert_close(_frame_matrix(layout, reference_mask(layout, topo)), want, msg=str((t_src, t_dst)))


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------


@given(layouts_and_topologies())
def test_dense_weights_match_reference(case: tuple[CanvasLayout, CanvasTopology]) -> None:
    layout, topo = case
    ref = reference_mask(layout, topo)
    got = compile_topology(layout, topo).dense_weights()
    assert got.shape == (layout.num_positions, layout.num_positions)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)


@given(layouts_and_topologies())
def test_to_attention_mask_matches_reference(case: tuple[CanvasLayout, CanvasTopology]) -> None:
    layout, topo = case
    torch.testing.assert_close(topo.to_attention_mask(layout).double(), reference_mask(layout, topo), atol=1e-5, rtol=0)


@given(layouts_and_topologies())
def test_dense_allowed_and_pair_count_match_reference(case: tuple[CanvasLayout, CanvasTopology]) -> None:
    layout, topo = case
    ref_allowed = reference_mask(layout, topo) > 0
    plan = compile_topology(layout, topo)
    allowed = plan.dense_allowed()
    assert allowed.dtype == torch.bool
    assert torch.equal(allowed, ref_allowed)
    assert plan.num_allowed_pairs == int(ref_allowed.sum())


@given(layouts_and_topologies())
def test_additive_mask_matches_reference(case: tuple[CanvasLayout, CanvasTopology]) -> None:
    layout, topo = case
    ref_allowed = reference_mask(layout, topo) > 0
    expected = torch.full(ref_allowed.shape, float("-inf"))
    expected[ref_allowed] = 0.0
    for i in range(ref_allowed.shape[0]):
        if not ref_allowed[i].any():  # a query with no allowed key attends itself
            expected[i, i] = 0.0
    for got in (compile_topology(layout, topo).additive_mask(), topo.to_additive_mask(layout)):
        assert torch.equal(got, expected)
        assert (got == 0).any(dim=1).all()  # softmax never sees an all -inf row


@given(layouts_and_topologies())
def test_block_views_match_reference_tiles(case: tuple[CanvasLayout, CanvasTopology]) -> None:
    layout, topo = case
    ref_allowed = reference_mask(layout, topo) > 0
    plan = compile_topology(layout, topo)
    for bs in (1, 2, 3, 5):
        view = plan.block_view(bs)
        nonempty, full = reference_tiles(ref_allowed, bs)
        assert view.block_size == bs
        assert view.num_blocks == -(-layout.num_positions // bs)
        assert torch.equal(view.nonempty, nonempty), f"block_size={bs}"
        assert torch.equal(view.full, full), f"block_size={bs}"
        assert view.density == pytest.approx(float(nonempty.float().mean()))
        assert plan.block_view(bs) is view  # cached


# ---------------------------------------------------------------------------------------
# FlexAttention BlockMask
# ---------------------------------------------------------------------------------------

# Eager (uncompiled) flex_attention on CPU works in this torch: it evaluates ``mask_mod`` over the
# whole score matrix and ignores the block structure (it warns that it is unfused). So the eager
# comparison checks ``mask_mod``; the block structure (kv / full-kv block lists) is checked
# separately below by replaying what the fused kernel does with it.

FLEX_BLOCK = 16


def _flex_layout() -> tuple[CanvasLayout, CanvasTopology]:
    """N = 5*3*4 = 60 (not a multiple of 16). Every region self-attends its own frame, so every
    assigned query has a key; the unassigned positions (column w=3, and 'slow''s cell past its
    last frame) have none."""
    layout = CanvasLayout(
        T=5, H=3, W=4, d_model=8,
        regions={
            "obs": (0, 5, 0, 2, 0, 3),
            "act": (0, 5, 2, 3, 0, 2),
            "slow": RegionSpec((0, 3, 2, 3, 2, 3), period=2),
        },
    )
    topo = CanvasTopology(
        [
            *CanvasTopology.causal_temporal(["obs", "act", "slow"]).connections,
            Connection("act", "slow", t_src=0, t_dst=0, temporal_fill="interpolate"),
            Connection("slow", "obs", weight=0.5),
        ]
    )
    return layout, topo


def _frame_blocks_layout() -> tuple[CanvasLayout, CanvasTopology]:
    """N = 64, one 16-block per frame: same-frame and previous-frame tiles are full, the
    two-frames-back tiles partial (only b -> a), the rest empty."""
    layout = CanvasLayout(T=4, H=4, W=4, d_model=8, regions={"a": (0, 4, 0, 2, 0, 4), "b": (0, 4, 2, 4, 0, 4)})
    conns = [Connection(s, d, t_src=0, t_dst=dt) for s in "ab" for d in "ab" for dt in (0, -1)]
    return layout, CanvasTopology([*conns, Connection("b", "a", t_src=0, t_dst=-2)])


FLEX_CASES = {"flex_layout": _flex_layout, "frame_blocks": _frame_blocks_layout}


def _replay_block_mask(block_mask, n: int) -> torch.Tensor:
    """The dense mask the fused kernel computes from a BlockMask: tiles in the full list are
    taken whole, tiles in the partial list go through mask_mod, all other tiles are skipped."""
    bs_q, bs_kv = block_mask.BLOCK_SIZE
    out = torch.zeros(n, n, dtype=torch.bool)
    kv_num, kv_idx = block_mask.kv_num_blocks[0, 0], block_mask.kv_indices[0, 0]
    full_num, full_idx = block_mask.full_kv_num_blocks[0, 0], block_mask.full_kv_indices[0, 0]
    zero = torch.tensor(0)
    for qb in range(kv_num.shape[0]):
        for kb in full_idx[qb, : int(full_num[qb])].tolist():
            out[qb * bs_q : (qb + 1) * bs_q, kb * bs_kv : (kb + 1) * bs_kv] = True
        for kb in kv_idx[qb, : int(kv_num[qb])].tolist():
            for q in range(qb * bs_q, min((qb + 1) * bs_q, n)):
                for k in range(kb * bs_kv, min((kb + 1) * bs_kv, n)):
                    out[q, k] = bool(block_mask.mask_mod(zero, zero, torch.tensor(q), torch.tensor(k)))
    return out[:n, :n]


@pytest.mark.parametrize("case", list(FLEX_CASES))
def test_block_mask_structure_matches_block_view_and_dense_mask(case: str) -> None:
    layout, topo = FLEX_CASES[case]()
    plan = compile_topology(layout, topo)
    n = layout.num_positions
    bm = plan.block_mask(block_size=FLEX_BLOCK)
    view = plan.block_view(FLEX_BLOCK)
    assert bm.shape == (1, 1, n, n)
    assert tuple(bm.BLOCK_SIZE) == (FLEX_BLOCK, FLEX_BLOCK)
    # to_dense(): partial + full tiles == the non-empty tiles of the block view
    assert torch.equal(bm.to_dense()[0, 0].bool(), view.nonempty)
    assert int(bm.full_kv_num_blocks.sum()) == int(view.full.sum())
    # what a fused kernel would compute from it is exactly the compiled mask, which is the reference
    replay = _replay_block_mask(bm, n)
    assert torch.equal(replay, plan.dense_allowed())
    assert torch.equal(replay, reference_mask(layout, topo) > 0)


def test_block_mask_marks_whole_allowed_tiles_full() -> None:
    # dense topology on a fully assigned grid of 32 positions: every 16x16 tile is full, so the
    # full-block list must carry them (and the partial list none).
    layout = CanvasLayout(T=2, H=4, W=4, d_model=8, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
    plan = compile_topology(layout, CanvasTopology.dense(["a", "b"]))
    bm = plan.block_mask(block_size=FLEX_BLOCK)
    assert bm.full_kv_num_blocks[0, 0].tolist() == [2, 2]
    assert bm.kv_num_blocks[0, 0].tolist() == [0, 0]
    assert torch.equal(_replay_block_mask(bm, 32), torch.ones(32, 32, dtype=torch.bool))


def _flex_vs_sdpa(
    layout: CanvasLayout, topo: CanvasTopology, seed: int, compiled: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    if compiled:
        flex_attention = torch.compile(flex_attention)
    plan = compile_topology(layout, topo)
    n = layout.num_positions
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, n, 8, generator=gen) for _ in range(3))
    allowed = plan.dense_allowed()
    with torch.no_grad():
        out = flex_attention(q, k, v, block_mask=plan.block_mask(block_size=FLEX_BLOCK))
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return out, ref, allowed.any(dim=1)


# torch advises compiling flex; these tests run it eager on purpose (one test compiles it).
_NO_COMPILE_WARNING = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@_NO_COMPILE_WARNING
def test_flex_attention_with_block_mask_equals_sdpa_with_dense_mask() -> None:
    layout, topo = _flex_layout()
    out, ref, has_key = _flex_vs_sdpa(layout, topo, seed=0)
    assigned_rows = layout.position_region_ids < len(layout.regions)
    assert torch.equal(has_key, assigned_rows)  # every assigned query has at least one key
    torch.testing.assert_close(out[:, :, has_key], ref[:, :, has_key], atol=1e-5, rtol=1e-5)
    # rows without a key come out as zeros from flex (never NaN)
    assert torch.equal(out[:, :, ~has_key], torch.zeros_like(out[:, :, ~has_key]))


@_NO_COMPILE_WARNING
def test_flex_attention_every_row_has_a_key() -> None:
    # a layout where every position is assigned and every query has a key: compare all rows
    layout = CanvasLayout(
        T=3, H=3, W=3, d_model=8,
        regions={"x": (0, 3, 0, 3, 0, 2), "y": RegionSpec((0, 2, 0, 3, 2, 3), period=2), "z": (2, 3, 0, 3, 2, 3)},
    )
    topo = CanvasTopology(
        [*CanvasTopology.causal_temporal(["x", "y", "z"]).connections, Connection("z", "y", t_src=0, t_dst=-1)]
    )
    out, ref, has_key = _flex_vs_sdpa(layout, topo, seed=1)
    assert bool(has_key.all())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@_NO_COMPILE_WARNING
@settings(max_examples=15)
@given(layouts_and_topologies(), st.integers(0, 2**16))
def test_flex_attention_matches_sdpa_on_random_topologies(case: tuple[CanvasLayout, CanvasTopology], seed: int) -> None:
    layout, topo = case
    out, ref, has_key = _flex_vs_sdpa(layout, topo, seed)
    torch.testing.assert_close(out[:, :, has_key], ref[:, :, has_key], atol=1e-5, rtol=1e-5)
    assert not math.isnan(float(out.sum()))


@pytest.mark.skipif(
    not os.environ.get("CANVAS_TEST_COMPILED_FLEX"),
    reason="opt-in (CANVAS_TEST_COMPILED_FLEX=1): torch.compile of flex_attention on CPU needs a C++ "
    "compiler and takes ~20 s cold; the block structure it uses is checked by "
    "test_block_mask_structure_matches_block_view_and_dense_mask",
)
def test_compiled_flex_attention_uses_the_block_structure() -> None:
    # the fused kernel skips empty tiles and skips mask_mod on full tiles, so this exercises
    # kv_num_blocks / full_kv_num_blocks, which eager flex_attention ignores
    for make in FLEX_CASES.values():
        layout, topo = make()
        out, ref, has_key = _flex_vs_sdpa(layout, topo, seed=2, compiled=True)
        torch.testing.assert_close(out[:, :, has_key], ref[:, :, has_key], atol=1e-5, rtol=1e-5)


def test_frame_blocks_layout_has_full_partial_and_empty_tiles() -> None:
    # guards the compiled test above: all three kinds of tile occur
    layout, topo = _frame_blocks_layout()
    view = compile_topology(layout, topo).block_view(FLEX_BLOCK)
    assert view.full.tolist() == [[i - 1 <= j <= i for j in range(4)] for i in range(4)]
    assert (view.nonempty & ~view.full).tolist() == [[j == i - 2 for j in range(4)] for i in range(4)]
