"""Slow regions whose real frames reach beyond the canvas's ``T`` (issue 17).

A region with period ``p`` over canvas frames ``t0 .. t1 - 1`` stands for real frames
``t0 + k * p``, which may pass ``T`` (the published package and the seed README allow it).
The expected masks below were printed by ``canvas-engineering==0.5.0`` on the same layout
and topology; the random cases check the compiler against a literal reference of the
``declare.topology`` semantics with the per-connection reference range ``[0, T_c)``.
"""

from __future__ import annotations

import random

import pytest
import torch
from test_partitioned_kernel import _check_against_reference

from canvas_engineering import CanvasAttention, CanvasLayout, CanvasTopology, Connection, RegionSpec, TemporalFill
from canvas_engineering.compilation.compiler import compile_topology

F = TemporalFill


def _layout() -> CanvasLayout:
    # T=4 canvas frames; real frames: fast 0..3, slow 0,2,4,6, slower 0,4
    return CanvasLayout(
        T=4,
        H=1,
        W=3,
        d_model=4,
        regions={
            "fast": RegionSpec((0, 4, 0, 1, 0, 1), period=1),
            "slow": RegionSpec((0, 4, 0, 1, 1, 2), period=2),
            "slower": RegionSpec((0, 2, 0, 1, 2, 3), period=4),
        },
    )


def _topology() -> CanvasTopology:
    return CanvasTopology(
        [
            Connection("fast", "fast", t_src=0, t_dst=-1, temporal_fill=F.HOLD, weight=0.5),
            Connection("fast", "fast", t_src=0, t_dst=0),
            Connection("fast", "slow", t_src=0, t_dst=0, temporal_fill=F.INTERPOLATE),
            Connection("fast", "slower", t_src=0, t_dst=0, temporal_fill=F.HOLD, weight=0.25),
            Connection("slow", "slow", t_src=0, t_dst=0, temporal_fill=F.DROP),
            Connection("slow", "slower", t_src=0, t_dst=0, temporal_fill=F.HOLD, weight=0.75),
            Connection("slow", "fast", t_src=0),
            Connection("slower", "slow", t_src=0, t_dst=0, temporal_fill=F.DROP, weight=2.0),
            Connection("slower", "slower"),
        ]
    )


#: published 0.5.0: ``_topology().to_attention_mask(_layout())`` (positions t*3 + column)
PUBLISHED_MASK = [
    [1.0, 1.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0, 1.0, 0.75, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    [0.0, 2.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.25, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 0.75, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.25, 0.5, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 1.0, 0.0, 0.75, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.25, 0.0, 0.5, 0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 1.0, 0.0, 0.75, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
]


def test_layout_accepts_real_frames_beyond_T() -> None:
    layout = _layout()
    assert [layout.real_frame("slow", k) for k in range(4)] == [0, 2, 4, 6]
    assert [layout.real_frame("slower", k) for k in range(2)] == [0, 4]
    assert layout.canvas_frame("slow", 6) == 3 and layout.canvas_frame("slow", 8) is None
    assert layout.real_horizon == 7
    # outputs count from real time: with t_current=3, slow's frames 2 and 3 (real 4, 6) are
    # outputs and slower's frame 1 (real 4) too; column 2 at frames 2-3 is unassigned (canvas time)
    later = CanvasLayout(T=4, H=1, W=3, d_model=4, regions=dict(layout.regions), t_current=3)
    assert later.output_mask().reshape(4, 3).tolist() == [
        [False, False, False],
        [False, False, True],
        [False, True, False],
        [True, True, True],
    ]


def test_mask_matches_published_package() -> None:
    expected = torch.tensor(PUBLISHED_MASK)
    assert torch.equal(_topology().to_attention_mask(_layout()), expected)
    # the slow frames at real times 4 and 6 take part: slow reads slower's frame 1 (real 4)
    # exactly at real 4 and holds it at real 6; slower's frame 1 reads slow's frame 2
    assert expected[7, 5] == 0.75 and expected[10, 5] == 0.75 and expected[5, 7] == 2.0


def test_hold_past_a_region_end_differs_from_published_as_documented() -> None:
    # README migration table: HOLD reads a frame for one period after the region's last frame.
    # fast ends at real 3; slow's frames at real 4 and 6 read fast at 4 and 6: published holds
    # fast's frame 3 (position 9), we read nothing. Real frames 0 and 2 agree.
    topo = CanvasTopology([Connection("slow", "fast", t_src=0, t_dst=0, temporal_fill=F.HOLD)])
    ours = topo.to_attention_mask(_layout())
    published_rows = {1: 0, 4: 6, 7: 9, 10: 9}  # slow position -> the fast position 0.5.0 lets it read
    for q, k in published_rows.items():
        assert ours[q].nonzero().flatten().tolist() == ([k] if q in (1, 4) else [])


# -- the compiler against a literal reference, on random slow layouts -----------------------


def _frames(spec: RegionSpec) -> list[int]:
    return [spec.bounds[0] + i * spec.period for i in range(spec.num_frames)]


def _share(spec: RegionSpec, rho: int, key_time: int, conn: Connection) -> float:
    frames = _frames(spec)
    if rho in frames:
        return float(key_time == rho)
    if not frames[0] <= rho < frames[-1] + spec.period or conn.temporal_fill is F.DROP:
        return 0.0
    before = max(f for f in frames if f < rho)
    if conn.temporal_fill is F.HOLD:
        return float(key_time == before)
    around = [before] + [f for f in frames if f > rho][:1]
    raw = {f: float(abs(rho - f)) ** -float(conn.interpolation_order) for f in around}
    return raw.get(key_time, 0.0) / sum(raw.values())


def reference_mask(layout: CanvasLayout, topology: CanvasTopology) -> torch.Tensor:
    """Loops over positions and reference frames ``[0, T_c)``, ``T_c`` = max(T, src/dst's last real frame + 1)."""
    info = []
    for t in range(layout.T):
        for h in range(layout.H):
            for w in range(layout.W):
                hit = [
                    (n, s.bounds[0] + (t - s.bounds[0]) * s.period)
                    for n, s in layout.regions.items()
                    if s.bounds[0] <= t < s.bounds[1]
                    and s.bounds[2] <= h < s.bounds[3]
                    and s.bounds[4] <= w < s.bounds[5]
                ]
                info.append(hit[0] if hit else (None, None))
    n = len(info)
    out = torch.zeros(n, n, dtype=torch.float64)
    for c in topology.connections:
        src, dst = layout.regions[c.src], layout.regions[c.dst]
        horizon = max(layout.T, _frames(src)[-1] + 1, _frames(dst)[-1] + 1)
        for q, (qr, qt) in enumerate(info):
            for k, (kr, kt) in enumerate(info):
                if qr != c.src or kr != c.dst:
                    continue
                best = c.weight if not c.is_temporal else 0.0
                for ref in range(horizon) if c.is_temporal else ():
                    if c.t_src is not None and qt != ref + c.t_src:
                        continue
                    if c.t_dst is None:
                        best = max(best, c.weight)
                    elif 0 <= ref + c.t_dst < horizon:
                        best = max(best, c.weight * _share(dst, ref + c.t_dst, kt, c))
                out[q, k] = max(out[q, k], best)
    return out


def _random_case(rng: random.Random) -> tuple[CanvasLayout, CanvasTopology]:
    T, H = rng.choice([2, 3, 4]), rng.choice([1, 2])
    names = ["r0", "r1", "r2"][: rng.choice([1, 2, 3])]
    regions = {}
    for col, name in enumerate(names):
        t0 = rng.randrange(T)
        regions[name] = RegionSpec(
            (t0, rng.randrange(t0 + 1, T + 1), 0, H, col, col + 1), period=rng.choice([1, 2, 3, 5])
        )
    layout = CanvasLayout(T=T, H=H, W=len(names), d_model=4, regions=regions)
    offsets = [None, -2, -1, 0, 1]
    conns = [
        Connection(
            rng.choice(names),
            rng.choice(names),
            weight=rng.choice([0.5, 1.0, 2.0]),
            t_src=rng.choice(offsets),
            t_dst=rng.choice(offsets),
            temporal_fill=rng.choice(list(F)),
            interpolation_order=rng.choice([0, 1, 2]),
        )
        for _ in range(rng.randint(1, 5))
    ]
    return layout, CanvasTopology(conns)


@pytest.mark.parametrize("seed", range(40))
def test_compiler_matches_reference_on_random_slow_layouts(seed: int) -> None:
    layout, topology = _random_case(random.Random(seed))
    got = compile_topology(layout, topology).dense_weights().double()
    torch.testing.assert_close(got, reference_mask(layout, topology), atol=1e-6, rtol=1e-6)


def test_layouts_within_T_keep_their_masks_when_a_slow_region_is_added() -> None:
    # a slow region elsewhere does not widen other connections' reference range
    base = {"a": RegionSpec((0, 4, 0, 1, 0, 1)), "b": RegionSpec((0, 4, 0, 1, 1, 2))}
    conns = [Connection("a", "b", t_dst=-1), Connection("b", "a", t_src=1), Connection("a", "a", t_src=0, t_dst=-1)]
    alone = CanvasLayout(T=4, H=1, W=3, d_model=4, regions=base)
    with_slow = CanvasLayout(T=4, H=1, W=3, d_model=4, regions={**base, "s": RegionSpec((0, 4, 0, 1, 2, 3), period=3)})
    m_alone = CanvasTopology(conns).to_attention_mask(alone)
    m_slow = CanvasTopology(conns).to_attention_mask(with_slow)
    keep = torch.tensor([i % 3 != 2 for i in range(12)])
    assert torch.equal(m_slow[keep][:, keep], m_alone[keep][:, keep])


@pytest.mark.parametrize("kernel", ["partitioned", "tiled", "dense"])
def test_kernels_match_reference_on_a_slow_layout(kernel: str) -> None:
    plan = compile_topology(_layout(), _topology())
    mask = plan.group_mask(range(len(plan.topology.connections)))
    _check_against_reference(mask, kernel, seed=3, beta=1.0)


def test_block_view_matches_dense_mask_on_a_slow_layout() -> None:
    plan = compile_topology(_layout(), _topology())
    allowed = plan.dense_allowed()
    view = plan.block_view(3)  # one block per canvas frame
    tiles = allowed.reshape(4, 3, 4, 3).permute(0, 2, 1, 3).reshape(4, 4, 9)
    assert torch.equal(view.nonempty, tiles.any(-1))
    assert torch.equal(view.full, tiles.all(-1))


def test_canvas_attention_runs_on_a_slow_layout() -> None:
    torch.manual_seed(0)
    attn = CanvasAttention(_layout(), _topology(), d_model=8, n_heads=2, kernel="dense")
    x = torch.randn(2, 12, 8)
    want = attn(x)
    attn.set_kernel("partitioned")
    torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(want).all()
