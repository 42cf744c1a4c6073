"""The published 0.5.0 query methods on our classes, against the values 0.5.0 computes.

Every expected value below was printed by ``canvas-engineering==0.5.0`` on the same
declarations (its lists become our LongTensors where we return positions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from canvas_engineering.canvas import CanvasLayout, RegionSpec
from canvas_engineering.connectivity import CanvasTopology, Connection
from canvas_engineering.errors import (
    CanvasValidationError,
    FieldValidationError,
    LayoutValidationError,
    RegionValidationError,
    UnknownRegionError,
)
from canvas_engineering.typed.semantic import SemanticConditioner
from canvas_engineering.types import Field, compile_schema


@pytest.fixture
def layout() -> CanvasLayout:
    return CanvasLayout(
        T=3, H=4, W=5, d_model=8, regions={"a": (0, 3, 0, 2, 0, 3), "b": RegionSpec((1, 3, 2, 4, 1, 5))}
    )


def test_geometry_properties(layout: CanvasLayout) -> None:
    assert (layout.spatial_volume, layout.n_spatial_dims, layout.spatial_shape) == (20, 2, (4, 5))


def test_flat_index_matches_published(layout: CanvasLayout) -> None:
    assert [layout.flat_index(t, h, w) for t, h, w in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]] == [0, 59, 33]
    assert (layout.flat_index(1), layout.flat_index(1, 2)) == (20, 30)  # omitted coordinates are 0
    # vectorised: tensors broadcast, one index per coordinate triple
    t, h, w = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(5), indexing="ij")
    assert torch.equal(layout.flat_index(t, h, w).reshape(-1), torch.arange(60))
    # and it agrees with region_indices
    assert torch.equal(layout.flat_index(torch.tensor([1, 2]), torch.tensor([2, 3]), 4), torch.tensor([34, 59]))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((3, 0, 0), r"flat_index: t=3 must be an integer in \[0, T=3\)"),
        ((0, 4), r"flat_index: h=4 must be an integer in \[0, H=4\)"),
        ((0, 0, -1), r"flat_index: w=-1 must be an integer in \[0, W=5\)"),
        ((0, 0, 0, 0), r"3 spatial coordinates; the grid has 2"),
        ((torch.tensor([0, 5]),), r"flat_index: t=5 lies outside \[0, T=3\)"),
        ((torch.tensor([0.5]),), r"t must be an integer tensor"),
    ],
)
def test_flat_index_refuses_outside_grid(layout: CanvasLayout, args: tuple, match: str) -> None:
    with pytest.raises(LayoutValidationError, match=match):
        layout.flat_index(*args)


def test_region_indices_at_t_and_timesteps_match_published(layout: CanvasLayout) -> None:
    published = {
        "a": [[], [0, 1, 2, 5, 6, 7], [20, 21, 22, 25, 26, 27], [40, 41, 42, 45, 46, 47], []],
        "b": [[], [], [31, 32, 33, 34, 36, 37, 38, 39], [51, 52, 53, 54, 56, 57, 58, 59], []],
    }
    for name, per_frame in published.items():
        got = [layout.region_indices_at_t(name, t) for t in range(-1, 4)]
        assert [g.tolist() for g in got] == per_frame
        assert all(g.dtype == torch.long for g in got)
        # the frames concatenate to region_indices
        assert torch.equal(torch.cat(got), layout.region_indices(name))
    assert (layout.region_timesteps("a"), layout.region_timesteps("b")) == ([0, 1, 2], [1, 2])
    layout.region_indices_at_t("a", 0)[0] = 99  # a copy: the cache is untouched
    assert layout.region_indices_at_t("a", 0)[0] == 0
    with pytest.raises(UnknownRegionError, match="unknown region 'c'"):
        layout.region_timesteps("c")


def test_topology_queries_match_published() -> None:
    topo = CanvasTopology(
        [
            Connection("a", "b", weight=0.5),
            Connection("a", "b", weight=0.7),
            Connection("b", "a", t_src=0, t_dst=-1),
            Connection("a", "a"),
            Connection("b", "b", weight=0.25),
        ]
    )
    assert (topo.neighbors_of("a"), topo.attended_by("a")) == (["b", "b", "a"], ["b", "a"])
    assert (topo.neighbors_of("b"), topo.attended_by("b")) == (["a", "b"], ["a", "a", "b"])
    assert topo.neighbors_of("zzz") == []
    assert topo.to_block_adjacency() == {("a", "b"): 0.7, ("b", "a"): 1.0, ("a", "a"): 1.0, ("b", "b"): 0.25}
    assert CanvasTopology.hub_spoke("a", ["b"]).to_block_adjacency() == {
        ("a", "a"): 1.0,
        ("b", "b"): 1.0,
        ("a", "b"): 1.0,
        ("b", "a"): 1.0,
    }
    assert topo.has_temporal_constraints
    assert not CanvasTopology.dense(["a", "b"]).has_temporal_constraints
    assert CanvasTopology.causal_temporal(["a", "b"]).has_temporal_constraints
    assert not CanvasTopology([]).has_temporal_constraints
    assert CanvasTopology([Connection("a", "b", t_dst=0)]).has_temporal_constraints


# -- typed extras: Field options, BoundSchema.field_names / build_semantic_conditioner ------


@dataclass
class Robot:
    camera: Field = dataclasses.field(default_factory=lambda: Field(2, 2, family="observation", tags=("rgb",)))
    plan: Field = dataclasses.field(
        default_factory=lambda: Field(1, 1, period=2, temporal_extent=4, carrier="diffusive")
    )


def test_field_published_options() -> None:
    # values printed by published 0.5.0 (its 1-D spatial_shape stays (8,); ours is (8, 1), the same positions)
    assert (Field(spatial_shape=(8,)).h, Field(spatial_shape=(8,)).w) == (8, 1)
    assert Field(spatial_shape=(2, 3)).spatial_shape == (2, 3)
    assert Field(3, 2).spatial_shape == (3, 2)
    assert (Field().tags, Field().temporal_extent, Field().carrier) == ((), None, None)
    assert Field(tags=["a", "b"]).tags == ("a", "b")


def test_compile_schema_uses_temporal_extent_carrier_and_tags() -> None:
    bound = compile_schema(Robot(), T=4, H=3, W=3, d_model=8)
    assert bound.field_names == ["camera", "plan"]  # a list, as published
    # published 0.5.0 gives the same bounds: 4 canvas frames of period 2 = real frames 0, 2, 4, 6 (beyond T=4)
    assert bound.layout.regions["plan"].bounds == (0, 4, 0, 1, 2, 3)
    assert [bound.layout.real_frame("plan", k) for k in range(4)] == [0, 2, 4, 6]
    assert bound.layout.regions["camera"].num_frames == 4
    typed = bound.schema.metadata["typed"]
    assert typed["carriers"] == {"plan": "diffusive"} and typed["tags"] == {"camera": ["rgb"]}
    # without temporal_extent a period-2 field has ceil(T / 2) frames
    assert Field(period=2).num_frames(5) == 3 and Field(period=2, temporal_extent=9).num_frames(5) == 5


@pytest.mark.parametrize(
    ("field", "match"),
    [
        (Field(tags=("ok", "")), r"field 'x': tags=\('ok', ''\) must be a tuple of non-empty strings"),
        (Field(carrier="fluid"), r"field 'x': carrier"),
        (Field(temporal_extent=0), r"field 'x': temporal_extent"),
        (Field(spatial_shape=(2, 2, 2)), r"field 'x': spatial_shape=\(2, 2, 2\) must be \(h,\) or \(h, w\)"),
        (Field(h=2, spatial_shape=(3, 3)), r"field 'x': spatial_shape=\(3, 3\) must be .* \(got h=2, w=1\)"),
    ],
)
def test_field_options_refused_by_name(field: Field, match: str) -> None:
    with pytest.raises(FieldValidationError, match=match) as err:
        field.check("x")
    assert err.value.path == "x"


def test_build_semantic_conditioner_calls_embed_fn_once_with_every_description() -> None:
    bound = compile_schema(Robot(), T=4, H=3, W=3, d_model=8)
    calls = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return [[float(len(t)), 1.0, 0.0, float(i)] for i, t in enumerate(texts)]

    torch.manual_seed(0)
    cond = bound.build_semantic_conditioner(embed, embed_dim=4)
    assert calls == [["camera", "plan"]]  # the published call: the list of semantic types
    assert isinstance(cond, SemanticConditioner)
    assert cond.embeddings.tolist() == [[6.0, 1.0, 0.0, 0.0], [4.0, 1.0, 0.0, 1.0]]
    canvas = bound.create_batch(1)
    out = cond(canvas)
    vectors = cond.projection(cond.embeddings)  # residuals start at zero
    for i, path in enumerate(bound.field_names):
        idx = bound[path].indices
        torch.testing.assert_close(out[0, idx], vectors[i].expand(len(idx), -1))
    assert [n for n, _ in cond.named_buffers() if n == "embeddings"] == ["embeddings"]  # frozen
    assert cond.residual.requires_grad
    loose = bound.build_semantic_conditioner(embed, embed_dim=4, freeze_embeddings=False, learn_residuals=False)
    assert isinstance(loose.embeddings, torch.nn.Parameter) and not loose.residual.requires_grad


def test_build_semantic_conditioner_refuses_bad_embed_fn() -> None:
    bound = compile_schema(Robot(), T=4, H=3, W=3, d_model=8)
    with pytest.raises(RegionValidationError, match=r"one vector per field \(2\), got 1"):
        bound.build_semantic_conditioner(lambda texts: [[1.0, 2.0]], embed_dim=2)
    with pytest.raises(RegionValidationError, match=r"region 'plan': embed_fn returned a bad vector for 'plan'"):
        bound.build_semantic_conditioner(lambda texts: [[1.0, 2.0], [1.0, float("nan")]], embed_dim=2)
    with pytest.raises(
        CanvasValidationError, match=r"region 'camera' has a 2-number embedding, expected embed_dim=1536"
    ):
        bound.build_semantic_conditioner(lambda texts: [[1.0, 2.0]] * len(texts))
