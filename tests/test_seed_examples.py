"""The code examples of the seed README (canvas-engineering 0.1.0), ported into tests.

Each test names the README section it comes from and asserts the values the README documents
(or, where the README elides them with ``...``, values computed by hand from the declaration).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from canvas_engineering import (
    ATTENTION_TYPES,
    DEFAULT_ATTENTION,
    AttentionOp,
    CanvasLayout,
    CanvasSchema,
    CanvasTopology,
    Connection,
    ConnectionValidationError,
    RegionSpec,
    SpatiotemporalCanvas,
    compile_topology,
    transfer_distance,
)

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def region_level_mask(layout: CanvasLayout, region_weights: dict[tuple[str, str], float]) -> torch.Tensor:
    """(N, N) mask where every (query, key) pair gets the weight of its (query region, key region)."""
    n = layout.num_positions
    out = torch.zeros(n, n)
    for (src, dst), w in region_weights.items():
        q, k = layout.region_indices(src), layout.region_indices(dst)
        out[q[:, None], k[None, :]] = w
    return out


def frame_block(layout: CanvasLayout, mask: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """The (src positions, dst positions) block of an (N, N) mask."""
    return mask[layout.region_indices(src)][:, layout.region_indices(dst)]


def cosine_distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ---------------------------------------------------------------------------------------
# "How the canvas works"
# ---------------------------------------------------------------------------------------


@pytest.fixture
def robot_layout() -> CanvasLayout:
    return CanvasLayout(
        T=5, H=8, W=8, d_model=256,
        regions={
            "visual": (0, 5, 0, 6, 0, 6),  # 180 positions — video patches
            "action": (0, 5, 6, 7, 0, 1),  # 5 positions — per-frame actions
            "reward": (2, 3, 7, 8, 0, 1),  # 1 position — scalar reward
        },
        t_current=2,  # t >= 2 is future (diffusion output)
    )


def test_robot_canvas_geometry(robot_layout: CanvasLayout) -> None:
    assert robot_layout.num_positions == 320
    assert robot_layout.region_numel("visual") == 180
    assert robot_layout.region_numel("action") == 5
    assert robot_layout.region_numel("reward") == 1
    assert robot_layout.region_size("visual") == (5, 6, 6)
    assert robot_layout.region_size("action") == (5, 1, 1)
    assert robot_layout.region_size("reward") == (1, 1, 1)
    assert robot_layout.region_names == ("visual", "action", "reward")
    # flat index t*H*W + h*W + w, (t, h, w)-major
    assert robot_layout.region_indices("action").tolist() == [t * 64 + 6 * 8 for t in range(5)]
    assert robot_layout.region_indices("reward").tolist() == [2 * 64 + 7 * 8]
    assert robot_layout.region_indices("visual")[:7].tolist() == [0, 1, 2, 3, 4, 5, 8]
    # t_current=2: positions at t >= 2 are the diffusion outputs
    out = robot_layout.output_mask()
    assert out.shape == (320,)
    assert int(out.sum()) == 3 * 64
    assert not bool(out[: 2 * 64].any())
    assert bool(out[2 * 64 :].all())


def test_robot_canvas_create_place_extract(robot_layout: CanvasLayout) -> None:
    canvas = SpatiotemporalCanvas(robot_layout)
    batch = canvas.create_empty(batch_size=4)  # (4, 320, 256)
    assert batch.shape == (4, 320, 256)
    assert batch.dtype == torch.float32
    assert bool((batch == 0).all())

    visual_embs = torch.randn(4, 180, 256, generator=torch.Generator().manual_seed(0))
    placed = canvas.place(batch, visual_embs, "visual")  # write video patches
    assert torch.equal(canvas.extract(placed, "visual"), visual_embs)
    assert bool((batch == 0).all())  # place returns a copy, the input canvas is untouched
    # exactly the visual positions changed
    idx = robot_layout.region_indices("visual")
    assert torch.equal(placed[:, idx], visual_embs)
    others = torch.ones(320, dtype=torch.bool)
    others[idx] = False
    assert bool((placed[:, others] == 0).all())

    actions = canvas.extract(placed, "action")  # read action predictions
    assert actions.shape == (4, 5, 256)
    assert bool((actions == 0).all())

    # the (B, t, h, w, d) form of the region is accepted as well and lands in the same places
    grid = visual_embs.reshape(4, 5, 6, 6, 256)
    assert torch.equal(canvas.place(batch, grid, "visual"), placed)
    act = torch.arange(4 * 5 * 256, dtype=torch.float32).reshape(4, 5, 256)
    both = canvas.place(placed, act, "action")
    assert torch.equal(canvas.extract(both, "action"), act)
    assert torch.equal(canvas.extract(both, "visual"), visual_embs)


def test_layout_equality_is_consistent_with_hash() -> None:
    # layouts are frozen values (used in schemas); equal values must hash equally
    xy = CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"x": (0, 1, 0, 1, 0, 1), "y": (0, 1, 0, 1, 1, 2)})
    same = CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"x": (0, 1, 0, 1, 0, 1), "y": (0, 1, 0, 1, 1, 2)})
    assert xy == same and hash(xy) == hash(same)
    assert xy != CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"x": (0, 1, 0, 1, 0, 1)})
    # the same regions declared in the other order get other region ids ...
    yx = CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"y": (0, 1, 0, 1, 1, 2), "x": (0, 1, 0, 1, 0, 1)})
    assert xy.position_region_ids.tolist() == [0, 1]
    assert yx.position_region_ids.tolist() == [1, 0]
    # ... so whatever equality decides, a == b must imply hash(a) == hash(b)
    if xy == yx:
        assert hash(xy) == hash(yx), "CanvasLayout: equal layouts (regions in another order) hash differently"


def test_computer_use_canvas() -> None:
    layout = CanvasLayout(
        T=16, H=32, W=32, d_model=768,
        regions={
            "screen": (0, 16, 0, 24, 0, 24),  # 9,216 positions (56%)
            "mouse": (0, 16, 24, 26, 0, 4),  # 128 positions
            "keyboard": (0, 16, 26, 28, 0, 4),  # 128 positions
            "llm": (0, 16, 28, 32, 0, 8),  # 512 positions
        },
    )
    assert layout.num_positions == 16_384
    assert layout.region_numel("screen") == 9_216
    assert round(100 * layout.region_numel("screen") / layout.num_positions) == 56
    assert layout.region_numel("mouse") == 128
    assert layout.region_numel("keyboard") == 128
    assert layout.region_numel("llm") == 512
    summary = layout.summary()
    assert "16,384 positions" in summary
    assert "9,216" in summary


# ---------------------------------------------------------------------------------------
# "Declarative region frequency"
# ---------------------------------------------------------------------------------------


@pytest.fixture
def frequency_layout() -> CanvasLayout:
    return CanvasLayout(
        T=16, H=32, W=32, d_model=768,
        regions={
            "screen": (0, 16, 0, 24, 0, 24),  # raw tuple — period=1 default
            "mouse": RegionSpec(bounds=(0, 16, 24, 26, 0, 4), period=1, loss_weight=2.0),
            "thought": RegionSpec(bounds=(0, 4, 28, 32, 0, 8), period=4, loss_weight=1.0),  # frames 0,4,8,12
            "task_prompt": RegionSpec(bounds=(0, 1, 26, 28, 0, 4), is_output=False),  # no loss
        },
    )


def test_raw_tuples_wrap_as_regionspec_with_documented_defaults(frequency_layout: CanvasLayout) -> None:
    screen = frequency_layout.regions["screen"]
    assert isinstance(screen, RegionSpec)
    assert screen == RegionSpec(bounds=(0, 16, 0, 24, 0, 24))
    assert frequency_layout.region_spec("screen") is screen
    # the RegionSpec field table
    assert (screen.period, screen.is_output, screen.loss_weight) == (1, True, 1.0)
    assert frequency_layout.regions["thought"].period == 4


def test_loss_weight_mask_per_region(frequency_layout: CanvasLayout) -> None:
    weights = frequency_layout.loss_weight_mask("cpu")  # (N,) tensor
    assert weights.shape == (16_384,)
    assert weights.dtype == torch.float32

    def region(name: str) -> torch.Tensor:
        return weights[frequency_layout.region_indices(name)]

    assert bool((region("screen") == 1.0).all())
    assert bool((region("mouse") == 2.0).all())  # loss_weight=2.0
    assert bool((region("thought") == 1.0).all())
    assert bool((region("task_prompt") == 0.0).all())  # is_output=False -> no loss
    unassigned = frequency_layout.position_region_ids == len(frequency_layout.regions)
    assert int(unassigned.sum()) > 0
    assert bool((weights[unassigned] == 0.0).all())
    # the README's loss formula: sum of weights = 9216*1 + 128*2 + (4*4*8)*1
    assert float(weights.sum()) == 9216 + 256 + 128
    per_position_loss = torch.ones(16_384)
    loss = (per_position_loss * weights).sum() / weights.sum()
    assert float(loss) == pytest.approx(1.0)


def test_frame_mapping(frequency_layout: CanvasLayout) -> None:
    assert frequency_layout.real_frame("thought", canvas_t=2) == 8
    assert frequency_layout.canvas_frame("thought", real_t=8) == 2
    assert frequency_layout.canvas_frame("thought", real_t=7) is None  # not aligned
    assert [frequency_layout.real_frame("thought", canvas_t=k) for k in range(4)] == [0, 4, 8, 12]
    assert frequency_layout.canvas_frame("thought", real_t=12) == 3
    assert frequency_layout.canvas_frame("thought", real_t=16) is None  # past the last slot
    assert frequency_layout.canvas_frame("thought", real_t=-4) is None
    assert frequency_layout.real_frame("screen", canvas_t=7) == 7
    assert frequency_layout.canvas_frame("screen", real_t=7) == 7
    # the per-(region, canvas frame) real-time table agrees
    table = frequency_layout.frame_real_times
    assert table[2, :5].tolist() == [0, 4, 8, 12, -1]
    assert table[3, :2].tolist() == [0, -1]


def test_frame_mapping_with_offset_start() -> None:
    layout = CanvasLayout(T=10, H=1, W=1, d_model=4, regions={"slow": RegionSpec((3, 6, 0, 1, 0, 1), period=3)})
    assert [layout.real_frame("slow", k) for k in range(3)] == [3, 6, 9]
    assert [layout.canvas_frame("slow", t) for t in range(10)] == [None, None, None, 0, None, None, 1, None, None, 2]


# ---------------------------------------------------------------------------------------
# "Non-Euclidean connectivity"
# ---------------------------------------------------------------------------------------

ROBOTS = ["robot1_cam", "robot1_action", "robot2_cam", "robot2_action", "shared_task"]


@pytest.fixture
def robots_layout() -> CanvasLayout:
    # the README does not show this layout; a small one with the topology's regions
    # plus one unassigned column
    return CanvasLayout(
        T=2, H=4, W=5, d_model=16,
        regions={
            "robot1_cam": (0, 2, 0, 2, 0, 2),
            "robot2_cam": (0, 2, 0, 2, 2, 4),
            "robot1_action": (0, 2, 2, 3, 0, 1),
            "robot2_action": (0, 2, 2, 3, 2, 3),
            "shared_task": (0, 2, 3, 4, 0, 4),
        },
    )


@pytest.fixture
def robots_topology() -> CanvasTopology:
    return CanvasTopology(connections=[
        # Self-attention within each region
        Connection(src="robot1_cam", dst="robot1_cam"),
        Connection(src="robot1_action", dst="robot1_action"),
        Connection(src="robot2_cam", dst="robot2_cam"),
        Connection(src="robot2_action", dst="robot2_action"),
        Connection(src="shared_task", dst="shared_task"),
        # Causal: each robot's camera informs its own actions
        Connection(src="robot1_action", dst="robot1_cam"),
        Connection(src="robot2_action", dst="robot2_cam"),
        # Coordination: robots see each other's cameras
        Connection(src="robot1_cam", dst="robot2_cam", weight=0.5),
        Connection(src="robot2_cam", dst="robot1_cam", weight=0.5),
        # Hub: shared task reads from cameras, actions read from task
        Connection(src="shared_task", dst="robot1_cam"),
        Connection(src="shared_task", dst="robot2_cam"),
        Connection(src="robot1_action", dst="shared_task"),
        Connection(src="robot2_action", dst="shared_task"),
    ])


def test_multi_robot_attention_mask(robots_layout: CanvasLayout, robots_topology: CanvasTopology) -> None:
    mask = robots_topology.to_attention_mask(robots_layout)  # (N, N) float
    n = robots_layout.num_positions
    assert n == 40
    assert mask.shape == (n, n)
    assert mask.dtype == torch.float32
    # region-level matrix; rows = query (src) region, columns = key (dst) region
    order = ROBOTS
    literal = [
        #  r1cam  r1act  r2cam  r2act  task
        [1.0, 0.0, 0.5, 0.0, 0.0],  # robot1_cam
        [1.0, 1.0, 0.0, 0.0, 1.0],  # robot1_action
        [0.5, 0.0, 1.0, 0.0, 0.0],  # robot2_cam
        [0.0, 0.0, 1.0, 1.0, 1.0],  # robot2_action
        [1.0, 0.0, 1.0, 0.0, 1.0],  # shared_task
    ]
    weights = {(s, d): literal[i][j] for i, s in enumerate(order) for j, d in enumerate(order)}
    assert torch.equal(mask, region_level_mask(robots_layout, weights))
    # robot1_cam -> robot2_cam weight 0.5 appears, and only there and in the mirror edge
    assert bool((frame_block(robots_layout, mask, "robot1_cam", "robot2_cam") == 0.5).all())
    assert int((mask == 0.5).sum()) == 2 * 8 * 8
    assert set(mask.unique().tolist()) == {0.0, 0.5, 1.0}
    # unassigned positions (column w=4, and (h=2, w=1|3)) attend nothing and are attended by nothing
    free = robots_layout.position_region_ids == len(robots_layout.regions)
    assert int(free.sum()) == 2 * (4 + 2)
    assert bool((mask[free] == 0).all()) and bool((mask[:, free] == 0).all())


def test_multi_robot_additive_mask(robots_layout: CanvasLayout, robots_topology: CanvasTopology) -> None:
    mask = robots_topology.to_attention_mask(robots_layout)
    add = robots_topology.to_additive_mask(robots_layout)
    assert add.shape == mask.shape
    finite = torch.isfinite(add)
    assert bool((add[finite] == 0).all())  # only 0 and -inf
    assert bool((add[~finite] == float("-inf")).all())
    assert bool((add == 0).any(dim=1).all())  # every row has at least one 0
    free = robots_layout.position_region_ids == len(robots_layout.regions)
    assigned = ~free
    assert torch.equal(add[assigned] == 0, mask[assigned] > 0)
    # unassigned queries have no key: they attend only themselves
    for i in free.nonzero().flatten().tolist():
        assert (add[i] == 0).nonzero().flatten().tolist() == [i]


def test_multi_robot_attention_ops(robots_topology: CanvasTopology) -> None:
    ops = robots_topology.attention_ops()
    assert len(ops) == 13
    assert all(isinstance(op, AttentionOp) for op in ops)
    assert [op[:3] for op in ops] == [(c.src, c.dst, c.weight) for c in robots_topology.connections]
    assert ops[7] == ("robot1_cam", "robot2_cam", 0.5, "cross_attention")
    assert {op.fn for op in ops} == {"cross_attention"}
    assert robots_topology.regions == set(ROBOTS)


# -- convenience constructors, as literal region-level masks (one position per region) ------


def _line_layout(names: list[str]) -> CanvasLayout:
    return CanvasLayout(
        T=1, H=1, W=len(names), d_model=4, regions={n: (0, 1, 0, 1, i, i + 1) for i, n in enumerate(names)}
    )


@pytest.mark.parametrize(
    ("topology", "names", "expected"),
    [
        (CanvasTopology.dense(["a", "b", "c"]), ["a", "b", "c"], [[1, 1, 1], [1, 1, 1], [1, 1, 1]]),
        (CanvasTopology.isolated(["a", "b", "c"]), ["a", "b", "c"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
        # hub reads every spoke, each spoke reads the hub, all self-attend
        (CanvasTopology.hub_spoke("task", ["r1", "r2"]), ["task", "r1", "r2"], [[1, 1, 1], [1, 1, 0], [1, 0, 1]]),
        (
            CanvasTopology.hub_spoke("task", ["r1", "r2"], bidirectional=False),
            ["task", "r1", "r2"],
            [[1, 1, 1], [0, 1, 0], [0, 0, 1]],
        ),
        # A -> B -> C: each region reads the one before it
        (
            CanvasTopology.causal_chain(["obs", "plan", "act"]),
            ["obs", "plan", "act"],
            [[1, 0, 0], [1, 1, 0], [0, 1, 1]],
        ),
    ],
    ids=["dense", "isolated", "hub_spoke", "hub_spoke_oneway", "causal_chain"],
)
def test_convenience_constructors(topology: CanvasTopology, names: list[str], expected: list[list[int]]) -> None:
    mask = topology.to_attention_mask(_line_layout(names))
    assert torch.equal(mask, torch.tensor(expected, dtype=torch.float32))


def test_constructor_connection_counts() -> None:
    assert len(CanvasTopology.dense(["a", "b", "c"]).connections) == 9
    assert len(CanvasTopology.isolated(["a", "b", "c"]).connections) == 3
    assert len(CanvasTopology.hub_spoke("task", ["r1", "r2"]).connections) == 3 + 4
    assert len(CanvasTopology.causal_chain(["obs", "plan", "act"]).connections) == 3 + 2
    ct = CanvasTopology.causal_temporal(["obs", "act"])
    assert len(ct.connections) == 2 + 4
    assert all(c.is_temporal for c in ct.connections)
    assert {(c.t_src, c.t_dst) for c in ct.connections} == {(0, 0), (0, -1)}


# torchtune-style literal mask: T=3, H=1, W=2, a in column 0 and b in column 1, so the flat
# positions are a@t0, b@t0, a@t1, b@t1, a@t2, b@t2.
CAUSAL_TEMPORAL_6x6 = [
    # a0 b0 a1 b1 a2 b2
    [1, 0, 0, 0, 0, 0],  # a@t0: itself (same frame, own region)
    [0, 1, 0, 0, 0, 0],  # b@t0
    [1, 1, 1, 0, 0, 0],  # a@t1: a@t1 + every region at t0
    [1, 1, 0, 1, 0, 0],  # b@t1: b@t1 + every region at t0
    [0, 0, 1, 1, 1, 0],  # a@t2: a@t2 + every region at t1
    [0, 0, 1, 1, 0, 1],  # b@t2: b@t2 + every region at t1
]


def test_causal_temporal_literal_mask() -> None:
    layout = CanvasLayout(T=3, H=1, W=2, d_model=4, regions={"a": (0, 3, 0, 1, 0, 1), "b": (0, 3, 0, 1, 1, 2)})
    topo = CanvasTopology.causal_temporal(["a", "b"])
    expected = torch.tensor(CAUSAL_TEMPORAL_6x6, dtype=torch.float32)
    assert torch.equal(topo.to_attention_mask(layout), expected)
    assert torch.equal(compile_topology(layout, topo).dense_allowed(), expected.bool())
    add = topo.to_additive_mask(layout)
    assert torch.equal(add, torch.where(expected.bool(), 0.0, float("-inf")))


def test_causal_temporal_refuses_interpolation_which_would_read_the_future() -> None:
    with pytest.raises(ConnectionValidationError, match="causal_temporal: temporal_fill 'interpolate'.*future"):
        CanvasTopology.causal_temporal(["obs", "slow"], temporal_fill="interpolate")


@pytest.mark.parametrize("fill", ["hold", "drop"])
def test_causal_temporal_has_no_future_leakage(fill: str) -> None:
    # "No query sees a later frame than its own" (CanvasTopology.causal_temporal), for every
    # temporal_fill it accepts. 'slow' has period 3: real frames 0 and 3.
    layout = CanvasLayout(
        T=4, H=2, W=3, d_model=4,
        regions={
            "obs": (0, 4, 0, 2, 0, 2),
            "act": (0, 4, 0, 1, 2, 3),
            "slow": RegionSpec((0, 2, 1, 2, 2, 3), period=3),
        },
    )
    plan = compile_topology(layout, CanvasTopology.causal_temporal(["obs", "act", "slow"], temporal_fill=fill))
    allowed = plan.dense_allowed()
    real = layout.frame_real_times[layout.position_region_ids, layout.position_frames]
    q, k = allowed.nonzero().unbind(1)
    assert len(q) > 0
    leaks = [(int(real[a]), int(real[b])) for a, b in zip(q, k, strict=True) if real[b] > real[a]]
    assert leaks == [], f"(query real frame, key real frame) pairs that see the future: {sorted(set(leaks))}"
    # and full temporal context: act at frame 3 reads obs (4 positions per frame) at frame 2 only
    assert frame_block(layout, allowed, "act", "obs")[3].tolist() == [False] * 8 + [True] * 4 + [False] * 4


# -- temporal connectivity table ------------------------------------------------------------


@pytest.fixture
def columns_layout() -> CanvasLayout:
    """T=4, one position per (region, frame): cam, action, obs, thought in columns 0..3."""
    names = ["cam", "action", "obs", "thought"]
    return CanvasLayout(T=4, H=1, W=4, d_model=4, regions={n: (0, 4, 0, 1, i, i + 1) for i, n in enumerate(names)})


ALL_4x4 = [[1] * 4] * 4
EYE_4x4 = [[int(i == j) for j in range(4)] for i in range(4)]
PREV_4x4 = [[int(j == i - 1) for j in range(4)] for i in range(4)]


@pytest.mark.parametrize(
    ("connection", "expected"),
    [
        # Default: all timesteps (backward compatible)
        (Connection(src="cam", dst="action"), ALL_4x4),
        # Same-frame only: no temporal leakage
        (Connection(src="cam", dst="action", t_src=0, t_dst=0), EYE_4x4),
        # Previous frame: action at t queries obs at t-1 (t=0 has no previous frame: skipped)
        (Connection(src="action", dst="obs", t_src=0, t_dst=-1), PREV_4x4),
        # Full temporal self-attention (explicit)
        (Connection(src="thought", dst="thought", t_src=None, t_dst=None), ALL_4x4),
        # None / 0: all src timesteps query dst at each reference frame
        (Connection(src="cam", dst="action", t_src=None, t_dst=0), ALL_4x4),
    ],
    ids=["default", "same_frame", "previous_frame", "explicit_full", "none_0"],
)
def test_temporal_connectivity_table(
    columns_layout: CanvasLayout, connection: Connection, expected: list[list[int]]
) -> None:
    mask = CanvasTopology([connection]).to_attention_mask(columns_layout)
    block = frame_block(columns_layout, mask, connection.src, connection.dst)
    assert torch.equal(block, torch.tensor(expected, dtype=torch.float32))
    # nothing outside the (src, dst) block
    assert float(mask.sum()) == float(block.sum())


def test_default_connection_is_not_temporal() -> None:
    assert not Connection(src="cam", dst="action").is_temporal
    assert Connection(src="cam", dst="action", t_src=0, t_dst=0).is_temporal
    assert Connection(src="cam", dst="action", t_src=None, t_dst=0).is_temporal


# ---------------------------------------------------------------------------------------
# "Attention function types"
# ---------------------------------------------------------------------------------------


@pytest.fixture
def typed_layout() -> CanvasLayout:
    return CanvasLayout(
        T=8, H=16, W=16, d_model=512,
        regions={
            "visual": RegionSpec(bounds=(0, 8, 0, 12, 0, 12), default_attn="cross_attention"),
            "proprio": RegionSpec(bounds=(0, 8, 12, 13, 0, 2), default_attn="linear_attention"),
            "thought": RegionSpec(bounds=(0, 4, 13, 15, 0, 4), default_attn="mamba"),
            "goal": RegionSpec(bounds=(0, 1, 15, 16, 0, 4), default_attn="cross_attention", is_output=False),
        },
    )


@pytest.fixture
def typed_topology() -> CanvasTopology:
    return CanvasTopology(connections=[
        Connection(src="visual", dst="visual"),  # → cross_attention
        Connection(src="proprio", dst="proprio"),  # → linear_attention
        Connection(src="thought", dst="thought"),  # → mamba
        Connection(src="goal", dst="goal"),  # → cross_attention
        Connection(src="visual", dst="goal", fn="gated"),
        Connection(src="thought", dst="visual", fn="perceiver"),
        Connection(src="proprio", dst="visual", fn="pooling"),
        Connection(src="thought", dst="thought", fn="copy", t_src=0, t_dst=-1),
    ])


def test_attention_ops_resolve_with_layout(typed_layout: CanvasLayout, typed_topology: CanvasTopology) -> None:
    ops = typed_topology.attention_ops(typed_layout)
    assert ops[:4] == [
        ("visual", "visual", 1.0, "cross_attention"),
        ("proprio", "proprio", 1.0, "linear_attention"),
        ("thought", "thought", 1.0, "mamba"),
        ("goal", "goal", 1.0, "cross_attention"),
    ]
    assert ops[4:] == [
        ("visual", "goal", 1.0, "gated"),
        ("thought", "visual", 1.0, "perceiver"),
        ("proprio", "visual", 1.0, "pooling"),
        ("thought", "thought", 1.0, "copy"),
    ]
    assert ops[2].fn == "mamba" and ops[2].src == "thought" and ops[2].weight == 1.0


def test_attention_ops_resolution_order(typed_layout: CanvasLayout, typed_topology: CanvasTopology) -> None:
    # without a layout: connection.fn, else the global default
    assert DEFAULT_ATTENTION == "cross_attention"
    assert [op.fn for op in typed_topology.attention_ops()] == [
        "cross_attention", "cross_attention", "cross_attention", "cross_attention",
        "gated", "perceiver", "pooling", "copy",
    ]
    # connection.fn beats region.default_attn
    explicit = Connection(src="proprio", dst="proprio", fn="rwkv")
    assert typed_topology.resolve_fn(explicit, typed_layout) == "rwkv"
    assert typed_topology.resolve_fn(Connection(src="proprio", dst="visual"), typed_layout) == "linear_attention"
    # a region without default_attn falls through to the global default
    plain = CanvasLayout(T=1, H=1, W=1, d_model=4, regions={"proprio": (0, 1, 0, 1, 0, 1)})
    assert typed_topology.resolve_fn(Connection(src="proprio", dst="proprio"), plain) == "cross_attention"


def test_typed_topology_compiles(typed_layout: CanvasLayout, typed_topology: CanvasTopology) -> None:
    mask = typed_topology.to_attention_mask(typed_layout)
    n = typed_layout.num_positions
    assert mask.shape == (n, n)
    assert typed_layout.region_numel("visual") == 8 * 12 * 12
    # thought -> visual (perceiver) reads every visual token; visual -> thought is not declared
    assert bool((frame_block(typed_layout, mask, "thought", "visual") == 1).all())
    assert bool((frame_block(typed_layout, mask, "visual", "thought") == 0).all())


def test_attention_type_lineup() -> None:
    assert list(ATTENTION_TYPES) == [
        "cross_attention", "linear_attention", "cosine_attention", "sigmoid_attention",
        "gated", "perceiver", "pooling", "copy", "mamba", "rwkv", "hyena",
        "sparse_attention", "local_attention", "none", "random_fixed", "mixture",
    ]
    families = {name: desc.split(",")[0] for name, desc in ATTENTION_TYPES.items()}
    assert families["mamba"] == "State-space"
    assert families["perceiver"] == "Compression"
    assert families["none"] == "Meta"
    with pytest.raises(TypeError):
        ATTENTION_TYPES["mine"] = "x"  # type: ignore[index]
    for name in ATTENTION_TYPES:  # every declared type is accepted by connections and regions
        assert Connection("a", "b", fn=name).fn == name
        assert RegionSpec((0, 1, 0, 1, 0, 1), default_attn=name).default_attn == name


# ---------------------------------------------------------------------------------------
# "Semantic types and transfer distance"
# ---------------------------------------------------------------------------------------

CAM_VEC = (0.9, 0.1, 0.3, 0.0)
DEPTH_VEC = (0.8, 0.2, 0.35, 0.05)
JOINTS_VEC = (0.05, 0.9, -0.2, 0.4)


def test_transfer_distance_orders_modalities() -> None:
    cam = RegionSpec(
        bounds=(0, 8, 0, 12, 0, 12),
        semantic_type="RGB video 224x224 30fps from front-facing monocular camera",
        semantic_embedding=CAM_VEC,
        embedding_model="openai/text-embedding-3-small",
    )
    depth = RegionSpec(
        bounds=(0, 8, 0, 12, 0, 12),
        semantic_type="Metric depth map 224x224 from front-facing monocular camera",
        semantic_embedding=DEPTH_VEC,
    )
    joints = RegionSpec(
        bounds=(0, 8, 12, 13, 0, 1),
        semantic_type="7-DOF joint angles at 30Hz",
        semantic_embedding=JOINTS_VEC,
    )
    d_depth = transfer_distance(cam, depth)
    d_joints = transfer_distance(cam, joints)
    assert d_depth == pytest.approx(cosine_distance(CAM_VEC, DEPTH_VEC), abs=1e-9)
    assert d_joints == pytest.approx(cosine_distance(CAM_VEC, JOINTS_VEC), abs=1e-9)
    assert d_depth < d_joints  # cheap to bridge vs expensive
    assert d_depth < 0.05 and d_joints > 0.6
    assert transfer_distance(depth, cam) == pytest.approx(d_depth)  # symmetric
    assert transfer_distance(cam, cam) == pytest.approx(0.0, abs=1e-12)
    # raw vectors and tensors work too, and the range is [0, 2]
    assert transfer_distance(CAM_VEC, torch.tensor(DEPTH_VEC)) == pytest.approx(d_depth)
    assert transfer_distance([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(2.0)
    assert transfer_distance([1.0, 0.0], [0.0, 3.0]) == pytest.approx(1.0)
    assert cam.semantic_embedding == CAM_VEC
    assert isinstance(cam.semantic_embedding, tuple)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((0.7, 0.2), (0.7, 0.2)),  # identical: 1 - cos rounds to -2.2e-16
        (CAM_VEC, CAM_VEC),
        ((-0.263, 1.484, -0.291), (0.263, -1.484, 0.291)),  # opposite: 1 - cos rounds to 2 + 4.4e-16
    ],
)
def test_transfer_distance_stays_in_documented_range(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    d = transfer_distance(a, b)
    assert 0.0 <= d <= 2.0, f"transfer_distance({a}, {b}) = {d!r} is outside the documented [0, 2]"


# ---------------------------------------------------------------------------------------
# "Canvas schemas"
# ---------------------------------------------------------------------------------------

VISUAL_VEC = (1.0, 0.0, 0.0)
ACTION_VEC = (0.0, 0.0, 1.0)
CAMERA_VEC = (0.96, 0.28, 0.0)  # 1 - cos = 0.04 to visual
GRIPPER_VEC = (0.0, math.sqrt(1 - 0.88**2), 0.88)  # 1 - cos = 0.12 to action
AUDIO_VEC = (0.0, 1.0, 0.0)  # distance 1 to both


@pytest.fixture
def schema() -> CanvasSchema:
    return CanvasSchema(
        layout=CanvasLayout(
            T=8, H=16, W=16, d_model=256,
            regions={
                "visual": RegionSpec(
                    bounds=(0, 8, 0, 12, 0, 12),
                    semantic_type="RGB video 224x224",
                    semantic_embedding=VISUAL_VEC,
                ),
                "action": RegionSpec(
                    bounds=(0, 8, 12, 14, 0, 2),
                    loss_weight=2.0,
                    semantic_type="6-DOF end-effector + gripper",
                    semantic_embedding=ACTION_VEC,
                ),
            },
        ),
        topology=CanvasTopology(connections=[
            Connection(src="visual", dst="visual"),
            Connection(src="action", dst="visual"),
            Connection(src="action", dst="action"),
        ]),
        metadata={"model": "CogVideoX-2B", "data": "bridge_v2"},
    )


@pytest.fixture
def other_schema() -> CanvasSchema:
    return CanvasSchema(
        layout=CanvasLayout(
            T=4, H=8, W=8, d_model=128,
            regions={
                "audio": RegionSpec((0, 4, 0, 1, 0, 8), semantic_embedding=AUDIO_VEC),
                "gripper_cmd": RegionSpec((0, 4, 1, 2, 0, 1), semantic_embedding=GRIPPER_VEC),
                "camera": RegionSpec((0, 4, 2, 8, 0, 6), semantic_embedding=CAMERA_VEC),
                "untyped": (0, 4, 2, 3, 6, 8),
            },
        )
    )


def test_schema_json_round_trip_string(schema: CanvasSchema) -> None:
    text = schema.to_json()
    loaded = CanvasSchema.from_json(text)
    assert loaded == schema
    assert loaded.layout.regions["action"].loss_weight == 2.0
    assert loaded.layout.regions["visual"].semantic_embedding == VISUAL_VEC
    assert loaded.topology.connections == schema.topology.connections
    assert loaded.metadata == {"model": "CogVideoX-2B", "data": "bridge_v2"}
    # the serialised masks are identical too
    assert torch.equal(
        loaded.topology.to_attention_mask(loaded.layout), schema.topology.to_attention_mask(schema.layout)
    )


def test_schema_json_round_trip_file(schema: CanvasSchema, tmp_path) -> None:
    path = tmp_path / "robot_v1.json"
    text = schema.to_json(path)
    assert path.read_text(encoding="utf-8") == text + "\n"
    assert CanvasSchema.from_json(path) == schema
    assert CanvasSchema.from_json(str(path)) == schema
    # human-readable JSON declaring everything
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"version", "layout", "topology", "metadata"}
    assert data["layout"]["regions"]["action"]["bounds"] == [0, 8, 12, 14, 0, 2]
    assert data["layout"]["regions"]["action"]["semantic_type"] == "6-DOF end-effector + gripper"
    assert [c["src"] + "->" + c["dst"] for c in data["topology"]["connections"]] == [
        "visual->visual", "action->visual", "action->action",
    ]
    assert data["metadata"] == {"model": "CogVideoX-2B", "data": "bridge_v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["robot_v1.json"]  # no temp files left


def test_schema_round_trip_keeps_temporal_and_typed_connections(tmp_path) -> None:
    layout = CanvasLayout(
        T=6, H=2, W=2, d_model=8, t_current=3,
        regions={
            "a": RegionSpec((0, 3, 0, 1, 0, 2), period=2, is_output=False, default_attn="mamba",
                            semantic_embedding=(0.1, 0.2), embedding_model="m"),
            "b": (0, 6, 1, 2, 0, 2),
        },
    )
    topo = CanvasTopology([
        Connection("b", "a", weight=0.5, t_src=0, t_dst=-1, fn="gated", temporal_fill="interpolate",
                   interpolation_order=2),
        Connection("a", "b", temporal_fill="drop", t_src=None, t_dst=0),
    ])
    original = CanvasSchema(layout, topo, {"nested": {"k": [1, 2.5, None]}})
    loaded = CanvasSchema.from_json(original.to_json(tmp_path / "s.json"))
    assert loaded == original
    assert loaded.layout.t_current == 3
    assert loaded.topology.connections[0].temporal_fill.value == "interpolate"
    assert torch.equal(compile_topology(loaded.layout, loaded.topology).dense_weights(),
                       compile_topology(layout, topo).dense_weights())


def test_schema_default_topology_is_dense() -> None:
    layout = _line_layout(["a", "b"])
    schema = CanvasSchema(layout=layout)
    assert schema.topology == CanvasTopology.dense(["a", "b"])
    assert schema.metadata == {}


def test_compatible_regions(schema: CanvasSchema, other_schema: CanvasSchema) -> None:
    pairs = schema.compatible_regions(other_schema, threshold=0.3)
    # → [("visual", "camera", 0.04), ("action", "gripper_cmd", 0.12)]
    assert [(a, b) for a, b, _ in pairs] == [("visual", "camera"), ("action", "gripper_cmd")]
    assert pairs[0][2] == pytest.approx(0.04, abs=1e-9)
    assert pairs[1][2] == pytest.approx(0.12, abs=1e-9)
    assert all(isinstance(p, tuple) and len(p) == 3 for p in pairs)
    # a tighter threshold keeps only the closer pair; a looser one also admits the far pairs, sorted
    assert [(a, b) for a, b, _ in schema.compatible_regions(other_schema, threshold=0.1)] == [("visual", "camera")]
    everything = schema.compatible_regions(other_schema, threshold=2.0)
    assert len(everything) == 2 * 3  # 'untyped' has no embedding and takes no part
    distances = [d for _, _, d in everything]
    assert distances == sorted(distances)
    expected = {
        (a, b): cosine_distance(va, vb)
        for a, va in [("visual", VISUAL_VEC), ("action", ACTION_VEC)]
        for b, vb in [("audio", AUDIO_VEC), ("gripper_cmd", GRIPPER_VEC), ("camera", CAMERA_VEC)]
    }
    assert {(a, b): pytest.approx(d, abs=1e-9) for a, b, d in everything} == expected
    # and the other direction names the other schema's regions first
    back = other_schema.compatible_regions(schema, threshold=0.3)
    assert [(a, b) for a, b, _ in back] == [("camera", "visual"), ("gripper_cmd", "action")]
