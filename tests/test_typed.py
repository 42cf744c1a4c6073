"""Typed canvases: ``Field`` + ``compile_schema`` -> ``BoundSchema`` / ``RegionView``."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import pytest
import torch

from canvas_engineering import (
    CanvasSchema,
    CanvasTopology,
    Connection,
    SpatiotemporalCanvas,
    UnknownAttentionTypeError,
    UnknownRegionError,
)
from canvas_engineering.typed.fields import (
    BoundSchema,
    Field,
    FieldValidationError,
    PackingError,
    RegionView,
    TypedSchemaError,
    compile_schema,
)

# -- types under test ---------------------------------------------------------------------


@dataclass
class Arm:
    joints: Field = Field(1, 4, family="state")
    command: Field = Field(1, 4, loss_weight=2.0, family="action")


@dataclass
class Robot:
    camera: Field = Field(4, 4, family="observation")
    arm: Arm = field(default_factory=Arm)
    speed: float = 3.0  # plain value: ignored
    name: str = "r2"  # plain value: ignored


@dataclass
class Fleet:
    hub: Field = Field(2, 2, period=2)
    robots: list[Robot] = field(default_factory=lambda: [Robot(), Robot()])


@dataclass
class Base:
    camera: Field = Field(3, 3)
    joints: Field = Field(1, 5)


@dataclass
class Extended(Base):
    gripper: Field = Field(2, 1)


@dataclass
class Body:  # no Field of its own
    arm: Arm = field(default_factory=Arm)


@dataclass
class Walker:
    camera: Field = Field(2, 2)
    body: Body = field(default_factory=Body)


def pairs(bound: BoundSchema) -> set[tuple[str, str]]:
    return {(c.src, c.dst) for c in bound.topology.connections}


# -- flattening -----------------------------------------------------------------------------


def test_nesting_names_regions_by_dotted_path() -> None:
    bound = compile_schema(Robot(), T=3, d_model=8)
    assert bound.field_paths == ("camera", "arm.joints", "arm.command")
    assert bound["arm.joints"].shape == (3, 1, 4)
    assert bound["arm.command"].spec.loss_weight == 2.0
    assert bound.families == {"camera": "observation", "arm.joints": "state", "arm.command": "action"}
    assert bound.schema.metadata["typed"]["families"] == bound.families


def test_inheritance_keeps_parent_regions_and_their_packing() -> None:
    base = compile_schema(Base(), T=2, H=6, W=6, d_model=8)
    ext = compile_schema(Extended(), T=2, H=6, W=6, d_model=8)
    assert ext.field_paths == ("camera", "joints", "gripper")
    for path in base.field_paths:
        assert ext[path].spec == base[path].spec
    assert ext["gripper"].shape == (2, 2, 1)


def test_lists_of_objects_and_of_fields() -> None:
    bound = compile_schema(Fleet(), T=4, d_model=8)
    assert bound.field_paths == (
        "hub",
        "robots[0].camera",
        "robots[0].arm.joints",
        "robots[0].arm.command",
        "robots[1].camera",
        "robots[1].arm.joints",
        "robots[1].arm.command",
    )
    assert bound["robots[0].camera"].spec.bounds != bound["robots[1].camera"].spec.bounds

    @dataclass
    class Hand:
        fingers: list[Field] = field(default_factory=lambda: [Field(1, 2)] * 3)

    hand = compile_schema(Hand(), d_model=8)
    assert hand.field_paths == ("fingers[0]", "fingers[1]", "fingers[2]")
    assert ("fingers[0]", "fingers[2]") in pairs(hand)


def test_period_gives_ceil_T_over_period_frames() -> None:
    bound = compile_schema(Fleet(), T=5, d_model=8)
    spec = bound["hub"].spec
    assert (spec.period, spec.num_frames) == (2, 3)  # real frames 0, 2, 4
    assert bound.layout.real_frame("hub", 2) == 4


def test_packing_is_deterministic() -> None:
    a = compile_schema(Fleet(), T=4, d_model=8, connectivity="causal")
    b = compile_schema(Fleet(), T=4, d_model=8, connectivity="causal")
    assert a == b
    assert a.to_json() == b.to_json()
    assert CanvasSchema.from_json(a.to_json()) == a.schema


def test_shelf_packing_in_declaration_order() -> None:
    bound = compile_schema(Robot(), T=1, H=5, W=8, d_model=8)
    assert [bound[p].spec.bounds[2:] for p in bound] == [
        (0, 4, 0, 4),
        (0, 1, 4, 8),
        (4, 5, 0, 4),
    ]  # new shelf below the camera
    rows = compile_schema(Robot(), T=1, H=6, W=4, d_model=8, layout_strategy="rows")
    assert [rows[p].spec.bounds[2:] for p in rows] == [(0, 4, 0, 4), (4, 5, 0, 4), (5, 6, 0, 4)]


def test_auto_size_fits_and_is_minimal() -> None:
    bound = compile_schema(Fleet(), T=2, d_model=8)
    H, W = bound.layout.H, bound.layout.W
    side = max(H, W)
    for h in range(1, side + 1):
        for w in range(1, side + 1):
            smaller = max(h, w) < side or (max(h, w) == side and h * w < H * W)
            if smaller:
                with pytest.raises(PackingError):
                    compile_schema(Fleet(), T=2, H=h, W=w, d_model=8)

    @dataclass
    class Dots:
        a: Field = Field()
        b: Field = Field()
        c: Field = Field()
        d: Field = Field()
        e: Field = Field()

    dots = compile_schema(Dots(), d_model=8)
    assert (dots.layout.H, dots.layout.W) == (2, 3)  # max side 3; 2x3 is the smallest such grid
    assert compile_schema(Dots(), W=5, d_model=8).layout.H == 1  # one side given: the other fits
    assert compile_schema(Dots(), H=1, d_model=8).layout.W == 5


def test_too_small_grid_names_the_fields_that_do_not_fit() -> None:
    with pytest.raises(PackingError) as info:
        compile_schema(Robot(), T=1, H=5, W=4, d_model=8)
    assert info.value.unplaced == ("arm.command",)
    msg = str(info.value)
    assert "'arm.command' (1x4)" in msg and "5x4" in msg
    assert "'camera'" not in msg and "'arm.joints'" not in msg
    with pytest.raises(PackingError, match=r"'camera' \(4x4\)"):
        compile_schema(Robot(), T=1, H=3, W=8, d_model=8)


# -- wiring ---------------------------------------------------------------------------------


def test_hierarchical_wiring_of_one_object_tree() -> None:
    bound = compile_schema(Robot(), d_model=8)
    names = ["camera", "arm.joints", "arm.command"]
    assert pairs(bound) == {(s, d) for s in names for d in names}  # parent <-> child, siblings in Arm
    walker = compile_schema(Walker(), d_model=8)  # Body has no field: Arm links to Walker
    assert {("camera", "body.arm.joints"), ("body.arm.command", "camera")} <= pairs(walker)


def test_hierarchical_wiring_with_lists() -> None:
    got = pairs(compile_schema(Fleet(), T=2, d_model=8))
    expected = {
        ("hub", "hub"),
        ("hub", "robots[0].camera"),
        ("robots[1].camera", "hub"),
        ("robots[0].camera", "robots[0].arm.joints"),
        ("robots[0].arm.command", "robots[0].arm.joints"),
        ("robots[0].camera", "robots[1].camera"),  # list siblings: corresponding fields
        ("robots[1].arm.joints", "robots[0].arm.joints"),
        ("robots[0].arm.command", "robots[1].arm.command"),
    }
    assert expected <= got
    absent = {
        ("hub", "robots[0].arm.joints"),  # grandchild
        ("robots[0].arm.joints", "hub"),
        ("robots[0].camera", "robots[1].arm.joints"),  # not corresponding
        ("robots[0].arm.joints", "robots[1].arm.command"),
        ("robots[0].camera", "robots[1].arm.command"),
    }
    assert not absent & got
    assert all(not c.is_temporal and c.fn is None for c in compile_schema(Fleet(), d_model=8).topology.connections)


def test_causal_wiring_uses_causal_temporal_offsets() -> None:
    hier = compile_schema(Fleet(), T=4, d_model=8)
    causal = compile_schema(Fleet(), T=4, d_model=8, connectivity="causal")
    got = {(c.src, c.dst, c.t_src, c.t_dst) for c in causal.topology.connections}
    expected = set()
    for s, d in pairs(hier):
        expected.add((s, d, 0, -1))
        if s == d:
            expected.add((s, d, 0, 0))
    assert got == expected
    assert ("hub", "robots[0].camera", 0, 0) not in got
    weights = causal.topology.to_attention_mask(causal.layout)  # compiles; no query reads the future
    frames = causal.layout.position_frames
    assert not (weights > 0)[frames[:, None] < frames[None, :]].any()


def test_dense_isolated_and_given_topology() -> None:
    dense = compile_schema(Robot(), d_model=8, connectivity="dense")
    assert len(dense.topology.connections) == 9
    isolated = compile_schema(Robot(), d_model=8, connectivity="isolated")
    assert pairs(isolated) == {("camera", "camera"), ("arm.joints", "arm.joints"), ("arm.command", "arm.command")}
    topo = CanvasTopology([Connection("camera", "arm.joints")])
    given = compile_schema(Robot(), d_model=8, connectivity=topo)
    assert given.topology == topo and given.schema.metadata["typed"]["connectivity"] == "custom"


def test_field_attn_becomes_default_attn_of_outgoing_connections() -> None:
    @dataclass
    class Sensor:
        fast: Field = Field(1, 2, attn="linear_attention")
        slow: Field = Field(1, 2)

    bound = compile_schema(Sensor(), d_model=8)
    fns = {(op.src, op.dst): op.fn for op in bound.topology.attention_ops(bound.layout)}
    assert fns[("fast", "slow")] == "linear_attention"
    assert fns[("slow", "fast")] == "cross_attention"


# -- kinds of input ---------------------------------------------------------------------------


class PlainArm:
    def __init__(self) -> None:
        self.joints = Field(1, 4)
        self.torque = 0.5  # ignored
        self._cache = Field(9, 9)  # private: ignored


class PlainRobot:
    camera = Field(4, 4)
    label = "plain"  # ignored

    def __init__(self) -> None:
        self.arm = PlainArm()
        self.owner = self  # back-reference: ignored

    def helper(self) -> int:  # methods are ignored
        return 1


def test_plain_object_matches_dataclass_layout() -> None:
    plain = compile_schema(PlainRobot(), T=2, d_model=8)
    assert plain.field_paths == ("camera", "arm.joints")
    assert plain["arm.joints"].spec.shape == (2, 1, 4)


@pytest.mark.skipif(importlib.util.find_spec("pydantic") is None, reason="pydantic is not installed")
def test_pydantic_model() -> None:
    import pydantic

    class PArm(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        joints: Field = Field(1, 4, family="state")
        gain: float = 1.0

    class PRobot(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        camera: Field = Field(4, 4)
        arms: list[PArm] = pydantic.Field(default_factory=lambda: [PArm(), PArm()])

    bound = compile_schema(PRobot(), T=2, d_model=8)
    assert bound.field_paths == ("camera", "arms[0].joints", "arms[1].joints")
    assert ("arms[0].joints", "arms[1].joints") in pairs(bound)
    assert compile_schema(PRobot, T=2, d_model=8) == bound


def test_class_input_is_instantiated() -> None:
    assert compile_schema(Fleet, T=2, d_model=8) == compile_schema(Fleet(), T=2, d_model=8)

    @dataclass
    class NeedsArg:
        camera: Field
        joints: Field = Field(1, 2)

    with pytest.raises(TypedSchemaError, match=r"NeedsArg\(\).*camera"):
        compile_schema(NeedsArg, d_model=8)


def test_object_without_fields_is_refused() -> None:
    @dataclass
    class Empty:
        speed: float = 1.0

    with pytest.raises(TypedSchemaError, match="no Field"):
        compile_schema(Empty(), d_model=8)
    with pytest.raises(TypedSchemaError, match="got Field"):
        compile_schema(Field(2, 2), d_model=8)


# -- bound schema ---------------------------------------------------------------------------


def test_region_view_place_extract_round_trip() -> None:
    bound = compile_schema(Fleet(), T=3, d_model=6)
    view = bound["robots[1].arm.joints"]
    assert isinstance(view, RegionView)
    assert torch.equal(view.indices, bound.layout.region_indices("robots[1].arm.joints"))
    batch = bound.create_batch(2)
    assert batch.shape == (2, bound.layout.num_positions, 6) and not batch.any()
    x = torch.randn(2, view.num_positions, 6)
    placed = view.place(batch, x)
    assert torch.equal(view.extract(placed), x)
    assert torch.equal(view.extract(placed, grid=True), x.reshape(2, 3, 1, 4, 6))
    assert not bound["robots[0].arm.joints"].extract(placed).any()
    outside = torch.ones(bound.layout.num_positions, dtype=torch.bool)
    outside[view.indices] = False
    assert not placed[:, outside].any()  # nothing else written
    grid_x = torch.randn(2, *view.shape, 6)  # (B, t, h, w, d) is accepted too
    assert torch.equal(view.extract(view.place(batch, grid_x), grid=True), grid_x)
    assert isinstance(bound.build_canvas(), SpatiotemporalCanvas)


def test_bound_schema_access_and_summary() -> None:
    bound = compile_schema(Fleet(), T=2, d_model=8)
    assert "robots[0].camera" in bound and len(bound) == 7 and list(bound) == list(bound.field_paths)
    with pytest.raises(UnknownRegionError, match="robots\\[2\\].camera"):
        bound["robots[2].camera"]
    text = bound.summary()
    assert "robots[1].arm.command" in text and "hierarchical" in text and "action" in text
    assert bound.layout is bound.schema.layout and bound.topology is bound.schema.topology


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (Field(0, 4), "h=0"),
        (Field(1, -2), "w=-2"),
        (Field(1, 4, period=0), "period=0"),
        (Field(1, 4, period=1.5), "period=1.5"),
        (Field(1, 4, loss_weight=-1.0), "loss_weight=-1.0"),
        (Field(1, 4, family="sensor"), "family='sensor'"),  # type: ignore[arg-type]
    ],
)
def test_field_errors_name_the_field_path(bad: Field, words: str) -> None:
    @dataclass
    class BadArm:
        joints: Field = bad

    @dataclass
    class BadRobot:
        camera: Field = Field(2, 2)
        arm: BadArm = field(default_factory=BadArm)

    with pytest.raises(FieldValidationError, match=r"field 'arm\.joints'") as info:
        compile_schema(BadRobot(), d_model=8)
    assert words in str(info.value) and info.value.path == "arm.joints"


def test_unknown_attn_names_the_field_path() -> None:
    @dataclass
    class BadAttn:
        ok: Field = Field()
        sensors: list[Field] = field(default_factory=lambda: [Field(), Field(attn="warp_drive")])

    with pytest.raises(UnknownAttentionTypeError, match=r"field 'sensors\[1\]'.*'warp_drive'"):
        compile_schema(BadAttn(), d_model=8)


def test_bad_compile_options_are_named() -> None:
    with pytest.raises(TypedSchemaError, match="connectivity='star'"):
        compile_schema(Robot(), connectivity="star")  # type: ignore[arg-type]
    with pytest.raises(TypedSchemaError, match="layout_strategy='spiral'"):
        compile_schema(Robot(), layout_strategy="spiral")  # type: ignore[arg-type]
    with pytest.raises(TypedSchemaError, match="T=0"):
        compile_schema(Robot(), T=0)
    with pytest.raises(TypedSchemaError, match="reserved key 'typed'"):
        compile_schema(Robot(), metadata={"typed": 1})
    meta = compile_schema(Robot(), d_model=8, metadata={"robot": "r2"}).schema.metadata
    assert meta["robot"] == "r2" and meta["typed"]["root"].endswith("Robot")
