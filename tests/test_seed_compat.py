"""Code and schema files written for the published canvas-engineering packages (0.1.0-0.5.0) run here.

* every published module path imports and gives the published names (thin alias modules);
* schema files written by the published packages (``tests/fixtures/published_schemas/``, made
  with each published version) load, and ``to_json(format="published")`` writes what those
  packages read;
* the seed README's examples give the values the published 0.5.0 package computes for them
  (recorded in ``tests/fixtures/published_schemas/behaviour_0.5.0.json``).

The fixtures were generated once with the published packages in a scratch virtualenv; these
tests need none of them.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

import canvas_engineering
from canvas_engineering import (
    CanvasLayout,
    CanvasSchema,
    CanvasTopology,
    Connection,
    RegionSpec,
    SchemaValidationError,
    SpatiotemporalCanvas,
    transfer_distance,
)
from canvas_engineering.declare.schema import SCHEMA_FORMAT_VERSION

#: module path -> the names the published package gives there (the seed 0.1.0 file list plus
#: the later ``types`` and ``TemporalFill``)
PUBLISHED_PATHS = {
    "canvas": ["CanvasLayout", "RegionSpec", "SpatiotemporalCanvas", "transfer_distance", "ATTENTION_TYPES"],
    "connectivity": ["Connection", "CanvasTopology", "TemporalFill"],
    "looped_block": ["LoopedBlockWrapper"],
    "graft": ["graft_looped_blocks", "freeze_full", "freeze_half"],
    "schema": ["CanvasSchema"],
    "curriculum": ["CurriculumScheduler"],
    "sharpening": ["SharpeningSchedule"],
    "checkpoint": ["save_loop_checkpoint", "load_loop_checkpoint"],
    "action_heads": ["ActionHead"],
    "cogvideox": ["LoopedCogVideoXBlock", "detect_inner_dim"],
    "types": ["Field", "compile_schema", "BoundSchema", "BoundField", "LayoutStrategy", "ConnectivityPolicy"],
}


@pytest.mark.parametrize("path", sorted(PUBLISHED_PATHS))
def test_published_module_path_gives_the_published_names(path: str) -> None:
    module = importlib.import_module(f"canvas_engineering.{path}")
    missing = [name for name in PUBLISHED_PATHS[path] if not hasattr(module, name)]
    assert missing == []
    assert set(PUBLISHED_PATHS[path]) <= set(module.__all__)
    # an alias, not a copy: the same objects as the package's own
    for name in PUBLISHED_PATHS[path]:
        if hasattr(canvas_engineering, name):
            assert getattr(module, name) is getattr(canvas_engineering, name), name


def test_published_enums_at_the_top_level_are_the_option_strings() -> None:
    from canvas_engineering import ConnectivityPolicy, LayoutStrategy, types

    assert LayoutStrategy is types.LayoutStrategy and ConnectivityPolicy is types.ConnectivityPolicy
    assert LayoutStrategy.PACKED == "packed" and ConnectivityPolicy.DENSE == "dense"
    assert {"LayoutStrategy", "ConnectivityPolicy"} <= set(canvas_engineering.__all__)


# ---------------------------------------------------------------------------------------
# schema files both ways
# ---------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "published_schemas"
#: every published release -> the fixture its to_json writes (0.1.1-0.1.5 write byte-identical
#: files to 0.1.0, 0.4.0 and 0.4.2 to 0.3.0; checked when the fixtures were generated)
RELEASES = {
    **{v: "v0.1.0" for v in ("0.1.0", "0.1.1", "0.1.2", "0.1.3", "0.1.4", "0.1.5")},
    **{v: "v0.3.0" for v in ("0.3.0", "0.4.0", "0.4.2")},
    "0.5.0": "v0.5.0",
}


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_published_robot_schema_loads_with_every_field(release: str) -> None:
    schema = CanvasSchema.from_json(FIXTURES / f"{RELEASES[release]}_robot.json")
    layout = schema.layout
    assert (layout.T, layout.H, layout.W, layout.d_model, layout.t_current) == (8, 16, 16, 256, 2)
    assert list(layout.regions) == ["visual", "action", "thought", "goal", "reward"]
    action, thought, goal = layout.regions["action"], layout.regions["thought"], layout.regions["goal"]
    assert action.loss_weight == 2.0 and action.embedding_model == "my/embedder"
    assert action.semantic_embedding == (0.31, 0.08, -0.2, 0.1)
    assert layout.regions["visual"].embedding_model is None  # the published default, undeclared here
    assert (thought.period, thought.default_attn) == (2, "mamba")
    assert goal.is_output is False and layout.regions["reward"].bounds == (2, 3, 15, 16, 4, 5)
    conns = schema.topology.connections
    assert [(c.src, c.dst, c.weight, c.t_src, c.t_dst, c.fn) for c in conns][1:5] == [
        ("action", "visual", 0.5, None, None, None),
        ("action", "action", 1.0, 0, 0, None),
        ("action", "thought", 1.0, 0, -1, "gated"),
        ("thought", "thought", 1.0, 0, -1, "copy"),
    ]
    assert schema.metadata["model"] == "CogVideoX-2B"
    has_extras = RELEASES[release] != "v0.1.0"  # carrier / operator / write_mode arrived in 0.3.0
    assert ("published_extras" in schema.metadata) == has_extras
    if has_extras:
        assert schema.metadata["published_extras"] == {
            "carriers": {"action": "diffusive"},
            "connections": [
                {"index": 3, "src": "action", "dst": "thought", "operator": "predict", "write_mode": "gate"}
            ],
        }


@pytest.mark.parametrize("name", ["v0.1.0_robot", "v0.3.0_robot", "v0.1.0_minimal"])
def test_published_writer_reproduces_the_published_file(name: str) -> None:
    # 0.1.0-0.4.2 write H/W: our published output is byte-for-byte their dict
    data = _fixture(name)
    written = CanvasSchema.from_dict(data).to_dict(format="published")
    if "topology" not in data:  # no topology in the file means dense, which we write out
        assert [(c["src"], c["dst"]) for c in written.pop("topology")] == [
            (s, d) for s in data["regions"] for d in data["regions"]
        ]
    assert written == data


def test_published_0_5_0_file_round_trips_through_our_published_writer() -> None:
    data = _fixture("v0.5.0_robot")
    written = CanvasSchema.from_dict(data).to_dict(format="published")
    layout = data["layout"]
    h, w = layout.pop("spatial_shape")
    assert written["layout"] == {**layout, "H": h, "W": w}  # H/W: every release reads it, 0.5.0 too
    assert {k: v for k, v in written.items() if k != "layout"} == {k: v for k, v in data.items() if k != "layout"}


def test_one_dimensional_published_grid_keeps_its_flat_positions() -> None:
    schema = CanvasSchema.from_json(FIXTURES / "v0.5.0_1d.json")
    assert (schema.layout.T, schema.layout.H, schema.layout.W) == (4, 32, 1)
    # 0.5.0: position = t * 32 + s
    assert schema.layout.region_indices("act").tolist() == [t * 32 + s for t in range(4) for s in (24, 25)]


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("v*.json")))
def test_published_file_round_trips_in_both_formats(name: str, tmp_path: Path) -> None:
    schema = CanvasSchema.from_json(FIXTURES / f"{name}.json")
    for fmt in ("native", "published"):
        path = tmp_path / f"{fmt}.json"
        schema.to_json(path, format=fmt)
        again = CanvasSchema.from_json(path)
        assert again == schema
    assert json.loads((tmp_path / "native.json").read_text())["version"] == SCHEMA_FORMAT_VERSION


def test_native_format_stays_the_default_and_strict() -> None:
    schema = CanvasSchema.from_json(FIXTURES / "v0.1.0_robot.json")
    data = json.loads(schema.to_json())
    assert data["version"] == SCHEMA_FORMAT_VERSION and "regions" in data["layout"]
    data["layout"]["spatial_shape"] = [16, 16]  # a published key is not one of ours
    with pytest.raises(SchemaValidationError, match=r"unknown key 'layout.spatial_shape'"):
        CanvasSchema.from_dict(data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["regions"]["goal"].update(perod=2), r"unknown key 'regions.goal.perod' \(did you mean 'period'"),
        (lambda d: d["topology"][0].update(temporal_fill="drop"), r"unknown key 'topology\[0\].temporal_fill'"),
        (lambda d: d.update(version=1), r"unknown key 'version'"),
        (lambda d: d["layout"].pop("W"), r"missing key 'layout.W'"),
        (lambda d: d["layout"].update(spatial_shape=[16, 16]), r"both 'spatial_shape' and 'H'/'W'"),
        (lambda d: d["layout"].update(H=2), r"key 'layout'.*outside the grid"),
        (lambda d: d.update(schema_version=2), r"key 'schema_version' is 2"),
        (lambda d: d["regions"]["goal"].update(loss_weight="x"), r"key 'regions.goal'.*loss_weight"),
    ],
)
def test_published_reader_accepts_exactly_the_published_keys(edit, message: str) -> None:
    data = _fixture("v0.1.0_robot")
    edit(data)
    with pytest.raises(SchemaValidationError, match=message):
        CanvasSchema.from_dict(data, where="schema file 'robot.json'")


def test_published_writer_refuses_what_published_files_cannot_carry() -> None:
    layout = CanvasLayout(T=4, H=2, W=2, d_model=8, regions={"a": (0, 4, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    conn = Connection("a", "b", t_src=0, t_dst=0, temporal_fill="interpolate")
    schema = CanvasSchema(layout, CanvasTopology([conn]))
    with pytest.raises(SchemaValidationError, match=r"connection 'a'->'b' \(#0\): temporal_fill='interpolate'"):
        schema.to_json(format="published")
    with pytest.raises(SchemaValidationError, match=r"format='v1' must be one of 'native', 'published'"):
        schema.to_json(format="v1")


# ---------------------------------------------------------------------------------------
# behaviour on the seed README's examples, against what published 0.5.0 computes
# ---------------------------------------------------------------------------------------

BEHAVIOUR = json.loads((FIXTURES / "behaviour_0.5.0.json").read_text())
ROBOT_REGIONS = {"visual": (0, 5, 0, 6, 0, 6), "action": (0, 5, 6, 7, 0, 1), "reward": (2, 3, 7, 8, 0, 1)}


def _mask_classes(mask: torch.Tensor, layout: CanvasLayout) -> set[tuple]:
    """The mask by (query region, query frame, key region, key frame, weight), as the fixture stores it."""
    names = [*layout.regions, "(unassigned)"]
    rid, frame = layout.position_region_ids, layout.position_frames
    q, k = mask.nonzero(as_tuple=True)
    w = mask[q, k]
    rows = torch.stack([rid[q], frame[q], rid[k], frame[k]], 1).tolist()
    return {(names[a], b, names[c], d, round(float(x), 6)) for (a, b, c, d), x in zip(rows, w.tolist(), strict=True)}


def test_robot_canvas_matches_published() -> None:
    want = BEHAVIOUR["robot"]
    layout = CanvasLayout(T=5, H=8, W=8, d_model=256, regions=ROBOT_REGIONS, t_current=2)
    assert layout.num_positions == want["num_positions"]
    assert list(SpatiotemporalCanvas(layout).create_empty(batch_size=4).shape) == want["create_empty_shape"]
    for name, indices in want["region_indices"].items():
        assert layout.region_indices(name).tolist() == indices
    assert {n: list(layout.region_size(n)) for n in layout.regions} == want["region_size"]
    # published: a list of flat indices; here a bool (N,) tensor over the same positions
    assert layout.output_mask().nonzero().flatten().tolist() == want["output_mask"]
    assert layout.loss_weight_mask().tolist() == want["loss_weight_mask"]


def test_causal_temporal_matches_published_except_holding_past_a_region_end() -> None:
    want = BEHAVIOUR["robot"]["causal_temporal_mask"]
    layout = CanvasLayout(T=5, H=8, W=8, d_model=256, regions=ROBOT_REGIONS, t_current=2)
    got = _mask_classes(CanvasTopology.causal_temporal(list(ROBOT_REGIONS)).to_attention_mask(layout), layout)
    published = {tuple(c) for c in want["classes"]}
    assert got <= published
    # The one documented difference (README, "Migrating"): the published HOLD keeps reading the
    # single-frame 'reward' region (frame 2) at every later frame; here a frame holds for one
    # period, so frames 4 read nothing from reward (frame 3 still reads it, at t_dst=-1).
    assert published - got == {("action", 4, "reward", 2, 1.0), ("visual", 4, "reward", 2, 1.0)}


def test_frequency_example_matches_published() -> None:
    want = BEHAVIOUR["frequency"]
    layout = CanvasLayout(
        T=16, H=32, W=32, d_model=768,
        regions={
            "screen": (0, 16, 0, 24, 0, 24),
            "mouse": RegionSpec(bounds=(0, 16, 24, 26, 0, 4), period=1, loss_weight=2.0),
            "thought": RegionSpec(bounds=(0, 4, 28, 32, 0, 8), period=4, loss_weight=1.0),
            "task_prompt": RegionSpec(bounds=(0, 1, 26, 28, 0, 4), is_output=False),
        },
    )
    w = layout.loss_weight_mask()
    assert {n: float(w[layout.region_indices(n)].sum()) for n in layout.regions} == want["loss_weight_sum"]
    assert {str(k): layout.real_frame("thought", canvas_t=k) for k in range(4)} == want["real_frame"]
    assert {str(r): layout.canvas_frame("thought", real_t=r) for r in range(16)} == want["canvas_frame"]


def test_multi_robot_topology_matches_published() -> None:
    want = BEHAVIOUR["multi_robot"]
    names = ["robot1_cam", "robot1_action", "robot2_cam", "robot2_action", "shared_task"]
    layout = CanvasLayout(
        T=2, H=4, W=4, d_model=32,
        regions={
            "robot1_cam": (0, 2, 0, 2, 0, 2), "robot1_action": (0, 2, 0, 1, 2, 3),
            "robot2_cam": (0, 2, 2, 4, 0, 2), "robot2_action": (0, 2, 2, 3, 2, 3),
            "shared_task": (0, 1, 3, 4, 3, 4),
        },
    )
    topology = CanvasTopology([
        *[Connection(n, n) for n in names],
        Connection("robot1_action", "robot1_cam"), Connection("robot2_action", "robot2_cam"),
        Connection("robot1_cam", "robot2_cam", weight=0.5), Connection("robot2_cam", "robot1_cam", weight=0.5),
        Connection("shared_task", "robot1_cam"), Connection("shared_task", "robot2_cam"),
        Connection("robot1_action", "shared_task"), Connection("robot2_action", "shared_task"),
    ])
    mask = topology.to_attention_mask(layout)
    assert list(mask.shape) == want["attention_mask"]["shape"]
    assert int((mask != 0).sum()) == want["attention_mask"]["nonzero"]
    assert _mask_classes(mask, layout) == {tuple(c) for c in want["attention_mask"]["classes"]}
    assert [list(op) for op in topology.attention_ops()] == want["attention_ops"]


@pytest.mark.parametrize("name", ["dense", "isolated", "hub_spoke", "causal_chain"])
def test_constructors_match_published(name: str) -> None:
    args = {"dense": (["a", "b", "c"],), "isolated": (["a", "b", "c"],), "hub_spoke": ("task", ["r1", "r2"]),
            "causal_chain": (["obs", "plan", "act"],)}[name]
    topology = getattr(CanvasTopology, name)(*args)
    got = [[c.src, c.dst, c.weight, c.t_src, c.t_dst] for c in topology.connections]
    assert got == BEHAVIOUR["constructors"][name]


def test_causal_temporal_constructor_has_the_published_connections() -> None:
    # same set of (src, dst, t_src, t_dst) operations, listed in another order
    got = CanvasTopology.causal_temporal(["obs", "act"]).connections
    assert sorted([c.src, c.dst, c.weight, c.t_src, c.t_dst] for c in got) == sorted(
        BEHAVIOUR["constructors"]["causal_temporal"]
    )


def test_schedules_and_distance_match_published() -> None:
    from canvas_engineering.curriculum import CurriculumScheduler
    from canvas_engineering.sharpening import SharpeningSchedule

    sched = CurriculumScheduler(max_loops=3, total_steps=5000)
    assert {s: sched.get_loops(int(s)) for s in BEHAVIOUR["curriculum"]} == BEHAVIOUR["curriculum"]
    sharp = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=4.0)
    assert [sharp(i) for i in range(3)] == BEHAVIOUR["sharpening"]
    a = RegionSpec(bounds=(0, 1, 0, 1, 0, 1), semantic_embedding=(1.0, 0.0, 0.5))
    b = RegionSpec(bounds=(0, 1, 0, 1, 0, 1), semantic_embedding=(0.8, 0.3, 0.4))
    assert transfer_distance(a, b) == pytest.approx(BEHAVIOUR["transfer_distance"], abs=1e-6)  # published: float32


def test_typed_layer_accepts_the_enum_spellings() -> None:
    from dataclasses import dataclass

    from canvas_engineering.types import ConnectivityPolicy, Field, LayoutStrategy, compile_schema

    @dataclass
    class Robot:
        cam: Field = Field(2, 2)
        arm: Field = Field(1, 1)

    by_enum = compile_schema(Robot(), connectivity=ConnectivityPolicy.DENSE, layout_strategy=LayoutStrategy.ROWS)
    by_name = compile_schema(Robot(), connectivity="dense", layout_strategy="rows")
    assert by_enum.layout == by_name.layout and by_enum.topology == by_name.topology
