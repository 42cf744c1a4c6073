"""Every validation rule: the exception class, and a message naming the culprit and the rule."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import canvas_engineering._atomic as atomic
from canvas_engineering import (
    CanvasLayout,
    CanvasSchema,
    CanvasTopology,
    CanvasValidationError,
    Connection,
    ConnectionValidationError,
    LayoutValidationError,
    RegionSpec,
    RegionValidationError,
    SchemaValidationError,
    SpatiotemporalCanvas,
    UnknownAttentionTypeError,
    UnknownRegionError,
    compile_topology,
)


def layout_with(**regions: object) -> CanvasLayout:
    return CanvasLayout(T=4, H=4, W=4, d_model=8, regions=regions)


def test_error_hierarchy() -> None:
    for cls in (
        RegionValidationError,
        LayoutValidationError,
        ConnectionValidationError,
        SchemaValidationError,
        UnknownAttentionTypeError,
        UnknownRegionError,
    ):
        assert issubclass(cls, CanvasValidationError)
        assert issubclass(cls, ValueError)
    assert issubclass(UnknownAttentionTypeError, KeyError)
    assert issubclass(UnknownRegionError, KeyError)
    # KeyError subclasses keep a readable (unquoted) message
    assert str(UnknownRegionError("unknown region 'x'")) == "unknown region 'x'"


# ---------------------------------------------------------------------------------------
# region bounds
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "pattern"),
    [
        ((0, 5, 0, 1, 0, 1), r"region 'r' bounds \(0,5,0,1,0,1\) lie outside the grid: t1=5 > T=4"),
        ((0, 1, 2, 6, 0, 1), r"region 'r' bounds \(0,1,2,6,0,1\) lie outside the grid: h1=6 > H=4"),
        ((0, 1, 0, 1, 3, 5), r"region 'r' bounds \(0,1,0,1,3,5\) lie outside the grid: w1=5 > W=4"),
    ],
)
def test_bounds_outside_grid(bounds: tuple[int, ...], pattern: str) -> None:
    with pytest.raises(RegionValidationError, match=pattern):
        layout_with(r=bounds)


_EMPTY = r"\(empty or reversed extent\)"


@pytest.mark.parametrize(
    ("bounds", "pattern"),
    [
        ((1, 1, 0, 1, 0, 1), r"region 'r': bounds \(1,1,0,1,0,1\): t1=1 must be greater than t0=1 " + _EMPTY),
        ((0, 1, 3, 2, 0, 1), r"region 'r': bounds \(0,1,3,2,0,1\): h1=2 must be greater than h0=3 " + _EMPTY),
        ((0, 1, 0, 1, 2, 0), r"region 'r': bounds \(0,1,0,1,2,0\): w1=0 must be greater than w0=2 " + _EMPTY),
    ],
)
def test_empty_or_reversed_bounds(bounds: tuple[int, ...], pattern: str) -> None:
    with pytest.raises(RegionValidationError, match=pattern):
        layout_with(r=bounds)


@pytest.mark.parametrize(
    ("bounds", "pattern"),
    [
        ((-1, 1, 0, 1, 0, 1), r"region 'r': bounds \(-1,1,0,1,0,1\): t0=-1 is negative"),
        ((0, 1, -2, 1, 0, 1), r"region 'r': bounds \(0,1,-2,1,0,1\): h0=-2 is negative"),
        ((0, 1, 0, 1, -3, 1), r"region 'r': bounds \(0,1,0,1,-3,1\): w0=-3 is negative"),
    ],
)
def test_negative_bounds(bounds: tuple[int, ...], pattern: str) -> None:
    with pytest.raises(RegionValidationError, match=pattern):
        layout_with(r=bounds)


@pytest.mark.parametrize("bounds", [(0, 1, 0, 1), (0, 1, 0, 1, 0, 1, 0), (), (0, 1, 0, 1, 0, 1.0), "012345", 7])
def test_wrong_length_or_type_of_bounds(bounds: object) -> None:
    with pytest.raises(
        RegionValidationError,
        match=r"region 'r': bounds .* must be six integers \(t0, t1, h0, h1, w0, w1\)",
    ):
        layout_with(r=bounds)
    with pytest.raises(RegionValidationError, match=r"bounds .* must be six integers"):
        RegionSpec(bounds=bounds)  # type: ignore[arg-type]


def test_overlapping_regions() -> None:
    with pytest.raises(
        LayoutValidationError,
        match=re.escape("region 'b' bounds (1,3,1,3,0,4) overlap region 'a' bounds (0,2,0,2,0,4)"),
    ):
        layout_with(a=(0, 2, 0, 2, 0, 4), b=(1, 3, 1, 3, 0, 4))
    # the later-declared region is named first, the earlier one second
    with pytest.raises(LayoutValidationError, match=r"region 'c' bounds \(0,1,0,1,0,1\) overlap region 'a'"):
        layout_with(a=(0, 4, 0, 1, 0, 4), b=(0, 4, 1, 2, 0, 4), c=(0, 1, 0, 1, 0, 1))
    # boxes that only touch (half-open extents) do not overlap
    layout = layout_with(a=(0, 2, 0, 2, 0, 2), b=(2, 4, 0, 2, 0, 2), c=(0, 4, 2, 4, 0, 2), d=(0, 4, 0, 4, 2, 4))
    assert layout.region_names == ("a", "b", "c", "d")


# ---------------------------------------------------------------------------------------
# other region fields
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("period", [0, -1, 1.5, 2.0, "2", True, None])
def test_bad_period(period: object) -> None:
    with pytest.raises(RegionValidationError, match=rf"period {re.escape(repr(period))} must be an integer >= 1"):
        RegionSpec((0, 1, 0, 1, 0, 1), period=period)  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [-0.5, -1, float("nan"), float("inf"), -float("inf"), "1.0", None, True])
def test_bad_loss_weight(weight: object) -> None:
    with pytest.raises(
        RegionValidationError,
        match=rf"loss_weight {re.escape(repr(weight))} must be a finite number >= 0",
    ):
        RegionSpec((0, 1, 0, 1, 0, 1), loss_weight=weight)  # type: ignore[arg-type]


def test_zero_loss_weight_is_allowed() -> None:
    assert RegionSpec((0, 1, 0, 1, 0, 1), loss_weight=0).loss_weight == 0.0


def test_bad_is_output() -> None:
    with pytest.raises(RegionValidationError, match=r"is_output 1 must be a bool"):
        RegionSpec((0, 1, 0, 1, 0, 1), is_output=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("embedding", "pattern"),
    [
        ((0.1, float("nan"), 0.3), r"semantic_embedding element 1 is nan; every element must be finite"),
        ([0.1, 0.2, float("inf")], r"semantic_embedding element 2 is inf; every element must be finite"),
        (torch.tensor([0.0, float("nan")]), r"semantic_embedding element 1 is nan"),
        ([[0.1, 0.2], [0.3, 0.4]], r"semantic_embedding must be a 1-D vector of numbers; element 0 is \[0\.1, 0\.2\]"),
        (torch.zeros(2, 2), r"semantic_embedding must be a 1-D vector of numbers; element 0 is \[0\.0, 0\.0\]"),
        ("RGB video", r"semantic_embedding must be a 1-D vector of numbers, got str"),
        (["a", "b"], r"semantic_embedding must be a 1-D vector of numbers; element 0 is 'a'"),
        ((1.0, True), r"semantic_embedding must be a 1-D vector of numbers; element 1 is True"),
        ((), r"semantic_embedding must not be empty"),
        (torch.tensor([]), r"semantic_embedding must not be empty"),
        (3.0, r"semantic_embedding must be a 1-D vector of numbers, got float"),
    ],
)
def test_bad_semantic_embedding(embedding: object, pattern: str) -> None:
    with pytest.raises(RegionValidationError, match=pattern):
        RegionSpec((0, 1, 0, 1, 0, 1), semantic_embedding=embedding)  # type: ignore[arg-type]


def test_region_errors_name_the_region_when_loaded_from_a_schema() -> None:
    data = _schema_dict()
    data["layout"]["regions"]["b"]["period"] = 0
    with pytest.raises(SchemaValidationError, match=r"key 'layout\.regions\.b': period 0 must be an integer >= 1"):
        CanvasSchema.from_dict(data)
    data = _schema_dict()
    data["layout"]["regions"]["a"]["semantic_embedding"] = [0.5, "x"]
    with pytest.raises(
        SchemaValidationError,
        match=r"key 'layout\.regions\.a': semantic_embedding .* element 1 is 'x'",
    ):
        CanvasSchema.from_dict(data)


# ---------------------------------------------------------------------------------------
# layout-wide rules
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["T", "H", "W", "d_model"])
@pytest.mark.parametrize("value", [0, -3, 2.0, None])
def test_bad_grid_size(name: str, value: object) -> None:
    kwargs = {"T": 2, "H": 2, "W": 2, "d_model": 4, name: value}
    with pytest.raises(
        LayoutValidationError,
        match=rf"CanvasLayout\.{name}={re.escape(repr(value))} must be an integer >= 1",
    ):
        CanvasLayout(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("t_current", [-1, 5, 2.0, None])
def test_t_current_outside_range(t_current: object) -> None:
    with pytest.raises(
        LayoutValidationError,
        match=rf"CanvasLayout\.t_current={re.escape(repr(t_current))} must be an integer in \[0, T=4\]",
    ):
        CanvasLayout(T=4, H=1, W=1, d_model=4, t_current=t_current)  # type: ignore[arg-type]


@pytest.mark.parametrize("t_current", [0, 2, 4])
def test_t_current_inside_range(t_current: int) -> None:
    assert CanvasLayout(T=4, H=1, W=1, d_model=4, t_current=t_current).t_current == t_current


def test_region_real_frames_beyond_T() -> None:
    # Accepted, as in the published package: 4 canvas frames with period 2 stand for real
    # frames 0, 2, 4, 6 on a T=4 canvas; the real time axis then spans [0, 7).
    layout = layout_with(slow=RegionSpec((0, 4, 0, 1, 0, 1), period=2))
    assert [layout.real_frame("slow", k) for k in range(4)] == [0, 2, 4, 6]
    assert layout.real_horizon == 7
    assert layout_with(slow=RegionSpec((1, 3, 0, 1, 0, 1), period=3)).real_horizon == 5  # frames 1, 4
    assert layout_with(slow=RegionSpec((0, 2, 0, 1, 0, 1), period=3)).real_horizon == 4  # within T
    # but real frames stay below MAX_POSITIONS (2**24)
    with pytest.raises(
        RegionValidationError,
        match=re.escape(
            "region 'slow' with period 8388608 over 3 canvas frames reaches real frame 16,777,216; "
            "real frames must stay below MAX_POSITIONS=16,777,216 (2**24)"
        ),
    ):
        layout_with(slow=RegionSpec((0, 3, 0, 1, 0, 1), period=2**23))


def test_bad_region_name_and_regions_type() -> None:
    with pytest.raises(RegionValidationError, match=r"region name '' must be a non-empty string"):
        layout_with(**{"": (0, 1, 0, 1, 0, 1)})
    with pytest.raises(LayoutValidationError, match=r"CanvasLayout\.regions must be a mapping .* got list"):
        CanvasLayout(T=1, H=1, W=1, d_model=1, regions=[(0, 1, 0, 1, 0, 1)])  # type: ignore[arg-type]


def test_unknown_region_lookup() -> None:
    layout = layout_with(a=(0, 1, 0, 1, 0, 1), b=(0, 1, 1, 2, 0, 1))
    for call in (layout.region_indices, layout.region_spec, layout.region_numel, layout.region_size):
        with pytest.raises(UnknownRegionError, match=r"unknown region 'zz'; layout regions: a, b"):
            call("zz")
    with pytest.raises(KeyError):  # also a KeyError
        layout.region_indices("zz")
    with pytest.raises(UnknownRegionError, match=r"unknown region 'zz'"):
        layout.real_frame("zz", 0)


@pytest.mark.parametrize("canvas_t", [-1, 1, 1.0])
def test_real_frame_outside_region(canvas_t: object) -> None:
    layout = layout_with(a=(0, 1, 0, 1, 0, 1))
    with pytest.raises(
        LayoutValidationError,
        match=rf"region 'a': canvas_t={re.escape(repr(canvas_t))} must be an integer in \[0, 1\)",
    ):
        layout.real_frame("a", canvas_t)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# connections and topologies
# ---------------------------------------------------------------------------------------


@pytest.fixture
def ab_layout() -> CanvasLayout:
    return layout_with(a=(0, 4, 0, 2, 0, 4), b=(0, 4, 2, 4, 0, 4))


UNKNOWN_DST = r"connection 'a'->'ghost' \(#1\) names unknown region 'ghost'; layout regions: a, b"


def test_unknown_region_in_compile_topology(ab_layout: CanvasLayout) -> None:
    topo = CanvasTopology([Connection("a", "a"), Connection("a", "ghost")])
    with pytest.raises(ConnectionValidationError, match=UNKNOWN_DST):
        compile_topology(ab_layout, topo)


def test_unknown_region_in_masks(ab_layout: CanvasLayout) -> None:
    topo = CanvasTopology([Connection("a", "a"), Connection("a", "ghost")])
    with pytest.raises(ConnectionValidationError, match=UNKNOWN_DST):
        topo.to_attention_mask(ab_layout)
    with pytest.raises(ConnectionValidationError, match=UNKNOWN_DST):
        topo.to_additive_mask(ab_layout)
    src_topo = CanvasTopology([Connection("nobody", "b")])
    with pytest.raises(
        ConnectionValidationError,
        match=r"connection 'nobody'->'b' \(#0\) names unknown region 'nobody'",
    ):
        src_topo.to_attention_mask(ab_layout)


def test_unknown_region_in_schema(ab_layout: CanvasLayout) -> None:
    topo = CanvasTopology([Connection("a", "a"), Connection("a", "ghost")])
    with pytest.raises(ConnectionValidationError, match=UNKNOWN_DST):
        CanvasSchema(layout=ab_layout, topology=topo)
    data = CanvasSchema(layout=ab_layout).to_dict()
    data["topology"]["connections"][1]["dst"] = "ghost"
    with pytest.raises(ConnectionValidationError, match=r"connection 'a'->'ghost' \(#1\) names unknown region 'ghost'"):
        CanvasSchema.from_json(json.dumps(data))


@pytest.mark.parametrize("weight", [0, 0.0, -1.0, float("nan"), float("inf"), "1", None, True])
def test_bad_connection_weight(weight: object) -> None:
    with pytest.raises(
        ConnectionValidationError,
        match=rf"connection 'a'->'b': weight {re.escape(repr(weight))} must be a finite number > 0 "
        r"\(use fn='none' to disable an edge\)",
    ):
        Connection("a", "b", weight=weight)  # type: ignore[arg-type]


@pytest.mark.parametrize(("src", "dst", "end"), [("", "b", "src"), ("a", None, "dst"), (3, "b", "src")])
def test_bad_connection_ends(src: object, dst: object, end: str) -> None:
    with pytest.raises(ConnectionValidationError, match=rf"{end} .* must be a non-empty region name"):
        Connection(src, dst)  # type: ignore[arg-type]


@pytest.mark.parametrize("offset", [0.5, "1", True])
def test_bad_frame_offset(offset: object) -> None:
    with pytest.raises(
        ConnectionValidationError,
        match=rf"connection 'a'->'b': t_src {re.escape(repr(offset))} must be an integer frame offset or None",
    ):
        Connection("a", "b", t_src=offset)  # type: ignore[arg-type]
    with pytest.raises(
        ConnectionValidationError,
        match=rf"connection 'a'->'b': t_dst {re.escape(repr(offset))} must be an integer frame offset or None",
    ):
        Connection("a", "b", t_dst=offset)  # type: ignore[arg-type]


@pytest.mark.parametrize("fill", ["sideways", "HOLD", 3, None])
def test_bad_temporal_fill(fill: object) -> None:
    with pytest.raises(
        ConnectionValidationError,
        match=rf"connection 'a'->'b': temporal_fill {re.escape(repr(fill))} must be one of drop, hold, interpolate",
    ):
        Connection("a", "b", temporal_fill=fill)  # type: ignore[arg-type]


def test_temporal_fill_accepts_strings() -> None:
    assert Connection("a", "b", temporal_fill="interpolate").temporal_fill.value == "interpolate"


@pytest.mark.parametrize("order", [-1, -0.5, float("nan"), float("inf"), "1", True])
def test_bad_interpolation_order(order: object) -> None:
    with pytest.raises(
        ConnectionValidationError,
        match=rf"connection 'a'->'b': interpolation_order {re.escape(repr(order))} must be a finite number >= 0",
    ):
        Connection("a", "b", interpolation_order=order)  # type: ignore[arg-type]


def test_topology_rejects_non_connections() -> None:
    with pytest.raises(ConnectionValidationError, match=r"topology connection #1 must be a Connection, got tuple"):
        CanvasTopology([Connection("a", "b"), ("a", "b")])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------
# attention types
# ---------------------------------------------------------------------------------------


def test_unknown_attention_type_in_connection() -> None:
    with pytest.raises(
        UnknownAttentionTypeError,
        match=r"connection 'a'->'b': unknown attention type 'flash_magic'; known types: ",
    ) as info:
        Connection("a", "b", fn="flash_magic")
    message = str(info.value)
    for name in ("cross_attention", "mamba", "perceiver", "none", "mixture"):
        assert name in message
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)


def test_unknown_attention_type_in_region() -> None:
    with pytest.raises(
        UnknownAttentionTypeError,
        match=r"default_attn: unknown attention type 'transformer'; known types: .*cross_attention",
    ):
        RegionSpec((0, 1, 0, 1, 0, 1), default_attn="transformer")
    with pytest.raises(KeyError):
        RegionSpec((0, 1, 0, 1, 0, 1), default_attn="Cross_Attention")
    # via a schema, the message names the region's key as well
    data = _schema_dict()
    data["layout"]["regions"]["a"]["default_attn"] = "transformer"
    with pytest.raises(
        SchemaValidationError,
        match=r"key 'layout\.regions\.a': default_attn: unknown attention type 'transformer'",
    ):
        CanvasSchema.from_dict(data)


def test_installed_attention_types_are_accepted() -> None:
    from canvas_engineering.plugins.attention.dot_product import CrossAttention

    from canvas_engineering.plugin_host.host import (
        KindRegistry,
        get_registry,
        hookimpl,
        register_plugin,
        unregister_plugin,
    )

    class MyPluginAttn:
        @staticmethod
        @hookimpl
        def register_attention_types(registry: KindRegistry) -> None:
            registry.add("my_plugin_attn", CrossAttention)  # the kind refuses anything but an AttentionType

    assert "my_plugin_attn" not in get_registry().attention_types
    name = register_plugin(MyPluginAttn(), name="test-validation-my-plugin-attn")  # installs the type
    try:
        assert Connection("a", "b", fn="my_plugin_attn").fn == "my_plugin_attn"
        assert RegionSpec((0, 1, 0, 1, 0, 1), default_attn="my_plugin_attn").default_attn == "my_plugin_attn"
        with pytest.raises(UnknownAttentionTypeError, match=r"known types: .*my_plugin_attn"):
            Connection("a", "b", fn="other")
    finally:
        unregister_plugin(name)
    with pytest.raises(UnknownAttentionTypeError, match=r"unknown attention type 'my_plugin_attn'"):
        Connection("a", "b", fn="my_plugin_attn")


# ---------------------------------------------------------------------------------------
# canvas tensor operations
# ---------------------------------------------------------------------------------------


@pytest.fixture
def robot_canvas() -> SpatiotemporalCanvas:
    layout = CanvasLayout(
        T=5, H=8, W=8, d_model=16,
        regions={"visual": (0, 5, 0, 6, 0, 6), "action": (0, 5, 6, 7, 0, 1)},
    )
    return SpatiotemporalCanvas(layout)


def test_place_wrong_token_count(robot_canvas: SpatiotemporalCanvas) -> None:
    batch = robot_canvas.create_empty(2)
    with pytest.raises(
        CanvasValidationError,
        match=re.escape("region 'visual' expects tokens of shape (2, 180, 16) or (2, 5, 6, 6, 16), got (2, 179, 16)"),
    ):
        robot_canvas.place(batch, torch.zeros(2, 179, 16), "visual")
    with pytest.raises(
        CanvasValidationError,
        match=re.escape("region 'action' expects tokens of shape (2, 5, 16) or (2, 5, 1, 1, 16), got (2, 6, 16)"),
    ):
        robot_canvas.place(batch, torch.zeros(2, 6, 16), "action")


def test_place_wrong_width_or_batch(robot_canvas: SpatiotemporalCanvas) -> None:
    batch = robot_canvas.create_empty(2)
    with pytest.raises(
        CanvasValidationError,
        match=re.escape("region 'visual' expects tokens of shape (2, 180, 16) or (2, 5, 6, 6, 16), got (2, 180, 8)"),
    ):
        robot_canvas.place(batch, torch.zeros(2, 180, 8), "visual")
    with pytest.raises(
        CanvasValidationError,
        match=re.escape("region 'visual' expects tokens of shape (2, 180, 16) or (2, 5, 6, 6, 16), got (3, 180, 16)"),
    ):
        robot_canvas.place(batch, torch.zeros(3, 180, 16), "visual")
    with pytest.raises(CanvasValidationError, match=re.escape("got (2, 5, 6, 5, 16)")):
        robot_canvas.place(batch, torch.zeros(2, 5, 6, 5, 16), "visual")


@pytest.mark.parametrize("batch_size", [True, False, 2.0, -1])
def test_create_empty_refuses_a_bool_or_non_integer_batch_size(
    robot_canvas: SpatiotemporalCanvas, batch_size: object
) -> None:
    # True is an int to Python; a canvas of batch "True" would silently be a batch of one
    with pytest.raises(CanvasValidationError, match=rf"batch_size={batch_size!r} must be a positive integer"):
        robot_canvas.create_empty(batch_size)  # type: ignore[arg-type]


def test_place_unknown_region_and_bad_canvas(robot_canvas: SpatiotemporalCanvas) -> None:
    batch = robot_canvas.create_empty(1)
    with pytest.raises(UnknownRegionError, match=r"unknown region 'reward'; layout regions: visual, action"):
        robot_canvas.place(batch, torch.zeros(1, 1, 16), "reward")
    with pytest.raises(UnknownRegionError, match=r"unknown region 'reward'"):
        robot_canvas.extract(batch, "reward")
    with pytest.raises(CanvasValidationError, match=re.escape("canvas must have shape (B, 320, 16), got (1, 319, 16)")):
        robot_canvas.extract(torch.zeros(1, 319, 16), "visual")
    with pytest.raises(CanvasValidationError, match=r"batch_size=0 must be a positive integer"):
        robot_canvas.create_empty(0)
    with pytest.raises(CanvasValidationError, match=r"SpatiotemporalCanvas needs a CanvasLayout, got dict"):
        SpatiotemporalCanvas({"T": 1})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------------------


def _schema_dict() -> dict:
    layout = CanvasLayout(
        T=2, H=2, W=2, d_model=4,
        regions={
            "a": RegionSpec((0, 2, 0, 1, 0, 2), semantic_embedding=(1.0, 0.0)),
            "b": RegionSpec((0, 2, 1, 2, 0, 2)),
        },
    )
    topo = CanvasTopology([Connection("a", "b"), Connection("b", "a", t_src=0, t_dst=-1)])
    return json.loads(CanvasSchema(layout, topo, {"k": "v"}).to_json())


def test_schema_dict_fixture_round_trips() -> None:
    # guards the malformed-schema tests below: the unmodified dict is valid
    schema = CanvasSchema.from_dict(_schema_dict())
    assert schema.layout.region_names == ("a", "b")
    assert len(schema.topology.connections) == 2


def test_invalid_json_text() -> None:
    with pytest.raises(
        SchemaValidationError,
        match=r"schema JSON: invalid JSON at line 1 column 2: Expecting property name",
    ):
        CanvasSchema.from_json("{bad json")
    text = json.dumps(_schema_dict())[:-5]  # truncated
    with pytest.raises(SchemaValidationError, match=r"schema JSON: invalid JSON at line 1 column \d+"):
        CanvasSchema.from_json(text)


def test_invalid_json_file(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"version": 1,\n  "layout": }', encoding="utf-8")
    with pytest.raises(
        SchemaValidationError,
        match=rf"schema file {re.escape(repr(str(path)))}: invalid JSON at line 2 column 13",
    ):
        CanvasSchema.from_json(path)


@pytest.mark.parametrize("key", ["T", "H", "W", "d_model"])
def test_missing_layout_key(key: str) -> None:
    data = _schema_dict()
    del data["layout"][key]
    with pytest.raises(SchemaValidationError, match=rf"schema JSON: missing key 'layout\.{key}'"):
        CanvasSchema.from_json(json.dumps(data))


def test_missing_layout_regions_and_layout() -> None:
    data = _schema_dict()
    del data["layout"]["regions"]
    with pytest.raises(SchemaValidationError, match=r"schema JSON: missing key 'layout\.regions'"):
        CanvasSchema.from_json(json.dumps(data))
    data = _schema_dict()
    del data["layout"]
    with pytest.raises(SchemaValidationError, match=r"schema JSON: missing key 'layout'"):
        CanvasSchema.from_json(json.dumps(data))
    data = _schema_dict()
    del data["layout"]["regions"]["a"]["bounds"]
    with pytest.raises(SchemaValidationError, match=r"missing key 'layout\.regions\.a\.bounds'"):
        CanvasSchema.from_dict(data)


@pytest.mark.parametrize("end", ["src", "dst"])
def test_connection_missing_end(end: str) -> None:
    data = _schema_dict()
    del data["topology"]["connections"][0][end]
    with pytest.raises(SchemaValidationError, match=rf"schema JSON: missing key 'topology\.connections\[0\]\.{end}'"):
        CanvasSchema.from_json(json.dumps(data))


def test_bad_connection_values_in_schema() -> None:
    data = _schema_dict()
    data["topology"]["connections"][1]["weight"] = -2
    with pytest.raises(
        SchemaValidationError,
        match=r"key 'topology\.connections\[1\]': connection 'b'->'a': weight -2 must be a finite number > 0",
    ):
        CanvasSchema.from_dict(data)
    data = _schema_dict()
    data["topology"]["connections"][0]["speed"] = 3
    with pytest.raises(
        SchemaValidationError,
        match=r"unknown key 'topology\.connections\[0\]\.speed'; keys allowed in 'topology\.connections\[0\]': src",
    ):
        CanvasSchema.from_dict(data)
    data = _schema_dict()
    data["topology"]["connections"] = {"src": "a"}
    with pytest.raises(SchemaValidationError, match=r"key 'topology\.connections' must be a list, got dict"):
        CanvasSchema.from_dict(data)
    data = _schema_dict()
    data["topology"]["connections"][0] = ["a", "b"]
    with pytest.raises(SchemaValidationError, match=r"key 'topology\.connections\[0\]' must be an object, got list"):
        CanvasSchema.from_dict(data)


@pytest.mark.parametrize("bounds", [5, None])
def test_non_list_bounds_in_schema(bounds: object) -> None:
    # from_json promises SchemaValidationError naming the bad key, not a bare TypeError
    data = _schema_dict()
    data["layout"]["regions"]["a"]["bounds"] = bounds
    with pytest.raises(SchemaValidationError, match=r"layout\.regions\.a.*bounds"):
        CanvasSchema.from_json(json.dumps(data))


def test_unknown_field_in_region() -> None:
    data = _schema_dict()
    data["layout"]["regions"]["b"]["colour"] = "red"
    with pytest.raises(
        SchemaValidationError,
        match=r"schema JSON: unknown key 'layout\.regions\.b\.colour'; keys allowed in 'layout\.regions\.b': bounds,",
    ):
        CanvasSchema.from_json(json.dumps(data))


def test_bad_layout_values_in_schema() -> None:
    data = _schema_dict()
    data["layout"]["T"] = 0
    with pytest.raises(SchemaValidationError, match=r"key 'layout': CanvasLayout\.T=0 must be an integer >= 1"):
        CanvasSchema.from_dict(data)
    data = _schema_dict()
    data["layout"]["regions"]["b"]["bounds"] = [0, 2, 0, 1, 0, 2]  # overlaps a
    with pytest.raises(
        SchemaValidationError,
        match=r"key 'layout': region 'b' bounds \(0,2,0,1,0,2\) overlap region 'a'",
    ):
        CanvasSchema.from_dict(data)
    data = _schema_dict()
    data["layout"]["regions"] = [1, 2]
    with pytest.raises(SchemaValidationError, match=r"key 'layout\.regions' must be an object, got list"):
        CanvasSchema.from_dict(data)
    with pytest.raises(SchemaValidationError, match=r"key '\(root\)' must be an object, got list"):
        CanvasSchema.from_dict([1, 2])


def test_unsupported_version() -> None:
    data = _schema_dict()
    data["version"] = 99
    with pytest.raises(SchemaValidationError, match=r"key 'version' is 99; this library reads version 1"):
        CanvasSchema.from_dict(data)


def test_nonexistent_file(tmp_path) -> None:
    path = tmp_path / "missing" / "schema.json"
    with pytest.raises(
        SchemaValidationError,
        match=rf"schema file {re.escape(repr(str(path)))}: cannot read: No such file or directory",
    ):
        CanvasSchema.from_json(path)
    with pytest.raises(SchemaValidationError, match=r"schema file 'no_such_schema\.json': cannot read"):
        CanvasSchema.from_json("no_such_schema.json")


def test_unserialisable_metadata_rejected_at_construction() -> None:
    layout = layout_with(a=(0, 1, 0, 1, 0, 1))
    with pytest.raises(SchemaValidationError, match=r"CanvasSchema\.metadata is not JSON-serialisable: .*set"):
        CanvasSchema(layout=layout, metadata={"tags": {1, 2}})
    with pytest.raises(SchemaValidationError, match=r"CanvasSchema\.metadata is not JSON-serialisable"):
        CanvasSchema(layout=layout, metadata={"x": float("nan")} | {"t": torch.zeros(1)})
    with pytest.raises(SchemaValidationError, match=r"CanvasSchema\.metadata must be a mapping, got list"):
        CanvasSchema(layout=layout, metadata=[1])  # type: ignore[arg-type]
    with pytest.raises(SchemaValidationError, match=r"CanvasSchema\.layout must be a CanvasLayout, got dict"):
        CanvasSchema(layout={"T": 1})  # type: ignore[arg-type]


def test_failed_write_leaves_original_file_intact(tmp_path, monkeypatch) -> None:
    path = tmp_path / "schema.json"
    first = CanvasSchema(layout_with(a=(0, 1, 0, 1, 0, 1)), metadata={"run": 1})
    first.to_json(path)
    original = path.read_bytes()
    second = CanvasSchema(layout_with(a=(0, 4, 0, 4, 0, 4)), metadata={"run": 2})

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left on device"):
        second.to_json(path)
    monkeypatch.undo()

    assert path.read_bytes() == original  # not half-written, not lost
    assert CanvasSchema.from_json(path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.json"]  # no temp file left behind
    # and a later successful write replaces it completely
    second.to_json(path)
    assert CanvasSchema.from_json(path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.json"]


def test_failed_first_write_creates_no_file(tmp_path, monkeypatch) -> None:
    def failing_fsync(fd: int) -> None:  # the temp file exists and holds the text by now
        raise OSError(5, "Input/output error")

    schema = CanvasSchema(layout_with(a=(0, 1, 0, 1, 0, 1)))
    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        schema.to_json(tmp_path / "new.json")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_block_view_rejects_bad_block_size() -> None:
    plan = compile_topology(layout_with(a=(0, 1, 0, 1, 0, 1)), CanvasTopology.dense(["a"]))
    for bad in (0, -4, 2.0):
        with pytest.raises(ValueError, match=rf"block_size={re.escape(repr(bad))} must be a positive integer"):
            plan.block_view(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("connections", [["x", 0], [None], [True], [0, 1.0], []])
def test_group_mask_refuses_non_index_connections(connections: list[object]) -> None:
    # mixed types used to reach sorted() and escape as a bare TypeError
    plan = compile_topology(layout_with(a=(0, 1, 0, 1, 0, 1)), CanvasTopology.dense(["a"]))
    with pytest.raises(CanvasValidationError, match=r"group_mask: connections .* must be indices in \[0, 1\)"):
        plan.group_mask(connections)  # type: ignore[arg-type]
    assert plan.group_mask(iter([0, 0])).num_queries == 1  # a one-shot iterable is read once


def test_transfer_distance_errors() -> None:
    from canvas_engineering import transfer_distance

    a = RegionSpec((0, 1, 0, 1, 0, 1), semantic_embedding=(1.0, 0.0), embedding_model="m1")
    b = RegionSpec((0, 1, 0, 1, 0, 1), semantic_embedding=(0.0, 1.0), embedding_model="m2")
    with pytest.raises(CanvasValidationError, match=r"embedding models differ \('m1' vs 'm2'\)"):
        transfer_distance(a, b)
    with pytest.raises(
        CanvasValidationError,
        match=r"the second RegionSpec \(bounds \(0, 1, 0, 1, 0, 1\)\) has no semantic_embedding",
    ):
        transfer_distance(a, RegionSpec((0, 1, 0, 1, 0, 1)))
    with pytest.raises(CanvasValidationError, match=r"embedding dimensions differ \(2 vs 3\)"):
        transfer_distance([1.0, 0.0], [1.0, 0.0, 0.0])
    with pytest.raises(CanvasValidationError, match=r"an all-zero embedding has no direction"):
        transfer_distance([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(CanvasValidationError, match=r"the first vector: semantic_embedding element 0 is nan"):
        transfer_distance([math.nan, 0.0], [1.0, 0.0])
    schema = CanvasSchema(layout_with(a=(0, 1, 0, 1, 0, 1)))
    with pytest.raises(CanvasValidationError, match=r"compatible_regions: threshold nan must be a finite number"):
        schema.compatible_regions(schema, threshold=math.nan)
