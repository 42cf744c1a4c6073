"""The published 0.5.0 query methods on our classes, against the values 0.5.0 computes.

Every expected value below was printed by ``canvas-engineering==0.5.0`` on the same
declarations (its lists become our LongTensors where we return positions).
"""

from __future__ import annotations

import pytest
import torch

from canvas_engineering.canvas import CanvasLayout, RegionSpec
from canvas_engineering.connectivity import CanvasTopology, Connection
from canvas_engineering.errors import LayoutValidationError, UnknownRegionError


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
