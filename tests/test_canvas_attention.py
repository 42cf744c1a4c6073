"""``CanvasAttention``: resolution of types, grouping, one call per group, kernels and errors.

``CanvasAttention(layout, topology, d_model, n_heads=...)`` compiles the plan once, groups the
connections by resolved type (connection ``fn`` -> src region ``default_attn`` ->
``cross_attention``), runs each group once per forward over the union of its positions and
sums the group outputs; a position that is no group's query gets 0. The per-type properties
(mask invariance, weights, beta, kernel agreement) are in ``test_attention_types.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from canvas_engineering.plugins.attention.dot_product import CrossAttention

import canvas_engineering.attention.canvas_attention as canvas_attention_module
from canvas_engineering.attention.attention_type import AttentionType
from canvas_engineering.attention.canvas_attention import CanvasAttention
from canvas_engineering.attention.kernels import KERNELS, SMALL_GROUP_PAIRS, resolve_kernel
from canvas_engineering.compilation.attention_mask import AttentionMask
from canvas_engineering.compilation.compiler import AttentionPlan, compile_topology
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.topology import CanvasTopology, Connection
from canvas_engineering.errors import CanvasValidationError, UnknownAttentionTypeError
from canvas_engineering.plugin_host.host import get_registry, hookimpl, register_plugin, unregister_plugin

D = 32
HEADS = 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny: intra-op threads only add contention (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LAYOUT = CanvasLayout(
    T=6,
    H=5,
    W=5,
    d_model=D,
    regions={
        "a": (0, 6, 0, 3, 0, 5),
        "b": (0, 6, 3, 4, 0, 2),
        "c": RegionSpec((0, 3, 4, 5, 0, 3), period=2),
        "d": (0, 6, 4, 5, 3, 4),
    },
)
N = LAYOUT.num_positions


def temporal_connections(fn: str | None = "cross_attention") -> list[Connection]:
    return [
        Connection("a", "a", t_src=0, t_dst=0, fn=fn),
        Connection("a", "b", t_src=0, t_dst=-1, weight=0.5, fn=fn),
        Connection("b", "c", t_src=0, t_dst=0, temporal_fill="interpolate", fn=fn),
        Connection("c", "a", fn=fn),
        Connection("b", "b", t_src=0, t_dst=-2, fn=fn),
        Connection("d", "a", t_src=0, t_dst=1, weight=2.0, fn=fn),
    ]


#: several types, several connections per type, c never a query
MIXED = [
    Connection("a", "a", t_src=0, t_dst=0),  # cross_attention (global default)
    Connection("a", "b", t_src=0, t_dst=-1, weight=0.5, fn="pooling"),
    Connection("b", "c", t_src=0, t_dst=0, temporal_fill="interpolate", fn="cross_attention"),
    Connection("b", "a", fn="pooling"),
    Connection("d", "c", weight=2.0, fn="linear_attention"),
    Connection("a", "c", fn="cross_attention"),
]


def build(
    conns: list[Connection], kernel: str = "tiled", seed: int = 0, layout: CanvasLayout = LAYOUT
) -> CanvasAttention:
    torch.manual_seed(seed)
    return CanvasAttention(layout, CanvasTopology(conns), d_model=D, n_heads=HEADS, kernel=kernel)


def tokens(batch: int = 2, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, N, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def positions(*regions: str) -> set[int]:
    return {int(p) for r in regions for p in LAYOUT.region_indices(r)}


# -- construction and resolution ----------------------------------------------------------


def test_forward_maps_tokens_to_updates_of_the_same_shape() -> None:
    torch.manual_seed(0)
    attn = CanvasAttention(LAYOUT, CanvasTopology(MIXED))  # d_model from the layout
    assert attn.d_model == D
    for batch in (1, 3):
        out = attn(tokens(batch))
        assert out.shape == (batch, N, D)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert isinstance(attn.plan, AttentionPlan)
    torch.testing.assert_close(
        attn.plan.dense_weights(), compile_topology(LAYOUT, CanvasTopology(MIXED)).dense_weights(), atol=0, rtol=0
    )
    narrow = CanvasAttention(LAYOUT, CanvasTopology(MIXED), d_model=16, n_heads=HEADS)  # overrides layout.d_model
    assert narrow(torch.randn(2, N, 16)).shape == (2, N, 16)
    with pytest.raises(ValueError, match=rf"\(B, {N}, 16\)"):
        narrow(tokens())


def test_fn_resolution_connection_then_region_default_then_cross_attention() -> None:
    layout = CanvasLayout(
        T=2,
        H=3,
        W=3,
        d_model=D,
        regions={
            "x": (0, 2, 0, 1, 0, 3),
            "p": RegionSpec((0, 2, 1, 2, 0, 3), default_attn="pooling"),
            "l": RegionSpec((0, 2, 2, 3, 0, 2), default_attn="linear_attention"),
        },
    )
    conns = [
        Connection("x", "p"),  # x has no default -> cross_attention
        Connection("p", "x"),  # p's default -> pooling
        Connection("p", "p", fn="rwkv"),  # the connection's fn wins over p's default
        Connection("l", "x", weight=0.5),  # l's default -> linear_attention
        Connection("x", "x", fn="pooling"),  # joins the pooling group
        Connection("l", "p"),  # linear_attention again
        Connection("l", "l", fn="cross_attention"),
    ]
    attn = build(conns, layout=layout)
    got = {g.fn: [(c.src, c.dst) for c in g.connections] for g in attn.groups}
    assert got == {
        "cross_attention": [("x", "p"), ("l", "l")],
        "pooling": [("p", "x"), ("x", "x")],
        "rwkv": [("p", "p")],
        "linear_attention": [("l", "x"), ("l", "p")],
    }
    assert len(attn.groups) == len({g.fn for g in attn.groups})  # one group per resolved type
    registry = get_registry().attention_types
    for g in attn.groups:
        assert isinstance(g.op, registry[g.fn].obj)
        assert g.op.d_model == D and g.op.n_heads == HEADS
    for c in conns:
        assert attn.topology.resolve_fn(c, layout) in got


def test_group_positions_are_the_union_with_each_partition_contiguous() -> None:
    attn = build(MIXED)
    by_fn = {g.fn: g for g in attn.groups}
    assert set(by_fn) == {"cross_attention", "pooling", "linear_attention"}
    expected = {
        "cross_attention": (("a", "b"), ("a", "c")),
        "pooling": (("a", "b"), ("b", "a")),
        "linear_attention": (("d",), ("c",)),
    }
    for fn, (src, dst) in expected.items():
        g = by_fn[fn]
        for pos, regions in ((g.q_positions, src), (g.k_positions, dst)):
            assert len(pos) == len(set(pos.tolist())), "a position must appear once per group"
            assert set(pos.tolist()) == positions(*regions)
        # queries grouped by what they read: every partition is one contiguous run, in ascending
        # canvas order inside, and partitions come in the order of their first frame
        plan = g.mask.partitions()
        rows = [p.q_index for p in plan.singles] + [r for b in plan.batches for r in b.q_index]
        for part in plan.singles:
            assert part.q_span is not None
        for q_index in rows:
            assert torch.equal(q_index, torch.arange(int(q_index[0]), int(q_index[0]) + len(q_index)))
            canvas = g.q_positions[q_index]
            assert torch.equal(canvas, canvas.sort().values)
        assert torch.equal(plan.order, torch.arange(g.mask.num_queries))  # already in partition order


def test_group_mask_is_the_compiled_mask_of_its_connections() -> None:
    attn = build(MIXED)
    for g in attn.groups:
        sub = compile_topology(LAYOUT, CanvasTopology(g.connections)).dense_weights()
        expected = sub[g.q_positions][:, g.k_positions]
        torch.testing.assert_close(g.mask.dense_weights(), expected, atol=0, rtol=0)
        assert g.mask.num_allowed_pairs == int((expected > 0).sum())
    single = build(temporal_connections())
    (g,) = single.groups
    full = single.plan.dense_weights()
    torch.testing.assert_close(g.mask.dense_weights(), full[g.q_positions][:, g.k_positions], atol=0, rtol=0)
    # every allowed pair of the plan is inside the group's rectangle
    assert int((full > 0).sum()) == g.mask.num_allowed_pairs


# -- execution ---------------------------------------------------------------------------


def test_each_group_runs_once_per_forward_over_its_union(monkeypatch: pytest.MonkeyPatch) -> None:
    attn = build(MIXED)
    calls: dict[str, list[tuple[int, int]]] = {g.fn: [] for g in attn.groups}
    for g in attn.groups:
        g.op.register_forward_hook(
            lambda mod, args, out, fn=g.fn: calls[fn].append((args[0].shape[1], args[1].shape[1]))
        )
    x = tokens()
    attn(x)  # builds the lazy tile plans

    def no_recompile(*args: object, **kwargs: object) -> None:
        raise AssertionError("forward must not recompile the topology")

    monkeypatch.setattr(canvas_attention_module, "compile_topology", no_recompile)
    built = []
    original = AttentionMask._build_tiles
    monkeypatch.setattr(AttentionMask, "_build_tiles", lambda self, *a: built.append(a) or original(self, *a))
    attn(x, beta=1.5)
    assert not built, "tile plans must be built once, not per forward"
    for g in attn.groups:
        union = (len(g.q_positions), len(g.k_positions))
        msg = f"group {g.fn} ({len(g.connections)} connections) must run once per forward"
        assert calls[g.fn] == [union, union], msg
    assert sum(len(g.connections) for g in attn.groups) == len(MIXED)
    assert any(len(g.connections) > 1 for g in attn.groups)


def test_output_is_the_sum_of_the_group_outputs() -> None:
    attn = build(MIXED)
    x = tokens()
    total = torch.zeros_like(x)
    for g in attn.groups:
        alone = build(g.connections, seed=123)
        (only,) = alone.groups
        only.op.load_state_dict(g.op.state_dict())
        total = total + alone(x)
    torch.testing.assert_close(attn(x), total, atol=1e-6, rtol=1e-6)


def test_positions_that_are_no_query_get_exactly_zero() -> None:
    attn = build(MIXED)
    x = tokens().requires_grad_(True)
    out = attn(x)
    queries = positions("a", "b", "d")  # c is never a src; plus the unassigned area
    rest = torch.tensor(sorted(set(range(N)) - queries))
    assert len(rest) > positions("c").__len__()
    assert (out[:, rest] == 0).all()
    assert out[:, sorted(queries)].abs().amax(-1).min() > 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_dense_reference_matches_the_formula_on_the_whole_canvas() -> None:
    """softmax(beta q.k / sqrt(hd) + log W) v over the compiled (N, N) weights, every kernel."""
    attn = build(temporal_connections()).double()
    (g,) = attn.groups
    op = g.op
    beta = 1.5
    x = tokens(dtype=torch.float64)
    w = attn.plan.dense_weights().double()
    hd = D // HEADS

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], N, HEADS, hd).transpose(1, 2)

    with torch.no_grad():
        q, k, v = heads(op.q_proj(x)), heads(op.k_proj(x)), heads(op.v_proj(x))
        logits = beta * (q @ k.transpose(-1, -2)) / math.sqrt(hd) + w.log()
        has_key = (w > 0).any(1)
        logits[:, :, ~has_key] = 0.0
        mix = torch.softmax(logits, -1) * has_key[:, None]
        expected = op.out_proj((mix @ v).transpose(1, 2).reshape(x.shape))
        is_query = torch.zeros(N, dtype=torch.bool)
        is_query[g.q_positions] = True
        expected[:, ~is_query] = 0.0
    assert (~has_key & is_query).any(), "the canvas must hold a query with no allowed key"
    for kernel in ("dense", "tiled", "flex"):
        attn.set_kernel(kernel)
        with torch.no_grad():
            out = attn(x, beta=beta)
        torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-7, msg=lambda m, k=kernel: f"{k}: {m}")


# -- kernels ---------------------------------------------------------------------------------


def test_kernel_is_chosen_automatically_and_overridable() -> None:
    assert KERNELS == ("auto", "flex", "partitioned", "tiled", "dense")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_kernel("auto", cpu, needs_grad=True) == "partitioned"
    assert resolve_kernel("auto", cpu, needs_grad=False) == "partitioned"
    assert resolve_kernel("auto", cuda, needs_grad=True) == "flex"
    for k in ("flex", "partitioned", "tiled", "dense"):
        assert resolve_kernel(k, cuda, needs_grad=True) == k
    assert resolve_kernel("flex", cpu, needs_grad=False) == "flex"
    # small groups run one dense SDPA call on CPU; large ones are partitioned, or tile-packed
    # under a position-level extra mask (partitions are class-level)
    assert resolve_kernel("auto", cpu, needs_grad=True, pairs=SMALL_GROUP_PAIRS) == "dense"
    assert resolve_kernel("auto", cpu, needs_grad=True, pairs=SMALL_GROUP_PAIRS + 1) == "partitioned"
    assert resolve_kernel("auto", cpu, needs_grad=True, pairs=SMALL_GROUP_PAIRS + 1, extra_mask=True) == "tiled"
    assert resolve_kernel("partitioned", cpu, needs_grad=True, extra_mask=True) == "tiled"
    assert resolve_kernel("auto", cuda, needs_grad=True, pairs=16) == "flex"

    attn = build(temporal_connections(), kernel="auto")
    assert {g.mask.kernel for g in attn.groups} == {"auto"}
    x = tokens()
    with torch.no_grad():
        auto = attn(x)
        attn.set_kernel("tiled")
        assert {g.mask.kernel for g in attn.groups} == {"tiled"}
        tiled = attn(x)
        attn.set_kernel("partitioned")
        partitioned = attn(x)
        attn.set_kernel("dense")
        dense = attn(x)
        attn.set_kernel("flex")
        flex = attn(x)
    # this canvas is small: auto runs the dense kernel on CPU
    assert all(g.mask.num_queries * g.mask.num_keys <= SMALL_GROUP_PAIRS for g in attn.groups)
    torch.testing.assert_close(auto, dense, atol=0, rtol=0)
    torch.testing.assert_close(dense, tiled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense, partitioned, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


#: canvases whose tile packing is not a single tile: several buckets, banded and gathered
#: key windows, clean (unmasked) tiles, query blocks with no key at all
_BIG = CanvasLayout(T=8, H=8, W=8, d_model=D, regions={"v": (0, 8, 0, 8, 0, 8)})
TILINGS = {
    "banded_sparse": (
        CanvasLayout(
            T=16,
            H=6,
            W=6,
            d_model=D,
            regions={
                "v": (0, 16, 0, 5, 0, 6),
                "act": (0, 16, 5, 6, 0, 3),
                "slow": RegionSpec((0, 8, 5, 6, 3, 6), period=2),
            },
        ),
        [
            Connection("v", "v", t_src=0, t_dst=0),
            Connection("v", "v", t_src=0, t_dst=-5, weight=0.5),
            Connection("act", "v", t_src=0, t_dst=-3),
            Connection("act", "act", t_src=0, t_dst=0),
            Connection("slow", "v", t_src=0, t_dst=0),
            Connection("v", "slow", t_src=0, t_dst=-1, weight=2.0, temporal_fill="interpolate"),
        ],
    ),
    "block_diagonal_clean": (_BIG, [Connection("v", "v", t_src=0, t_dst=0)]),
    "lagged_keyless_blocks": (_BIG, [Connection("v", "v", t_src=0, t_dst=-2, weight=0.5)]),
}


@pytest.mark.parametrize("fn", ["cross_attention", "local_attention", "sigmoid_attention"])
@pytest.mark.parametrize("canvas", sorted(TILINGS))
def test_tile_packing_matches_the_dense_reference(canvas: str, fn: str) -> None:
    layout, conns = TILINGS[canvas]
    torch.manual_seed(0)
    typed = [Connection(c.src, c.dst, c.weight, c.t_src, c.t_dst, fn, c.temporal_fill) for c in conns]
    attn = CanvasAttention(layout, CanvasTopology(typed), n_heads=HEADS, kernel="dense")
    (g,) = attn.groups
    if fn == "cross_attention":  # the canvas really exercises the packing it is named after
        plan = g.mask.tiles(g.mask.choose_block_size())
        assert plan.n_q_blocks > 1
        if canvas == "banded_sparse":
            assert len(plan.buckets) > 1 and (~plan.nonempty).any()
        if canvas == "block_diagonal_clean":
            assert plan.clean.any()
        if canvas == "lagged_keyless_blocks":
            assert (~plan.nonempty.any(1)).any()
    n = layout.num_positions
    x = torch.randn(2, n, D, generator=torch.Generator().manual_seed(1))
    r = torch.randn(2, n, D, generator=torch.Generator().manual_seed(2))
    grads, outs = {}, {}
    for kernel in ("dense", "tiled"):
        attn.set_kernel(kernel)
        attn.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        out = attn(xr)
        (out * r).sum().backward()
        outs[kernel] = out.detach()
        grads[kernel] = {"x": xr.grad, **{name: p.grad for name, p in attn.named_parameters()}}
    if fn == "cross_attention":
        attn.set_kernel("flex")
        with torch.no_grad():
            outs["flex"] = attn(x)
    for kernel, out in outs.items():
        diff = (out - outs["dense"]).abs().max().item()
        assert diff <= 1e-4, f"{canvas}/{fn}: {kernel} output differs from dense by {diff:.3g}"
    for name, grad in grads["dense"].items():
        assert torch.isfinite(grads["tiled"][name]).all(), f"{canvas}/{fn}: non-finite tiled gradient of {name}"
        diff = (grads["tiled"][name] - grad).abs().max().item()
        assert diff <= 1e-4, f"{canvas}/{fn}: tiled gradient of {name} differs from dense by {diff:.3g}"


@pytest.mark.parametrize("bad", ["sdpa", "Dense", ""])
def test_unknown_kernel_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="auto, flex, partitioned, tiled, dense"):
        build(MIXED, kernel=bad)
    attn = build(MIXED)
    with pytest.raises(ValueError, match="auto, flex, partitioned, tiled, dense"):
        attn.set_kernel(bad)


def test_flex_cannot_train_on_cpu() -> None:
    attn = build(temporal_connections(), kernel="flex")
    x = tokens()
    with pytest.raises(ValueError, match="CPU") as err:
        attn(x)
    assert "flex" in str(err.value)
    with torch.no_grad():
        out = attn(x)
    attn.set_kernel("dense")
    with torch.no_grad():
        torch.testing.assert_close(out, attn(x), atol=1e-5, rtol=1e-5)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(2, N + 1, D), (2, N - 1, D), (2, N, D + 1), (N, D), (1, 2, N, D)],
    ids=["too_many_positions", "too_few_positions", "wrong_width", "no_batch", "extra_dim"],
)
def test_wrong_input_shape_names_the_expected_shape(shape: tuple[int, ...]) -> None:
    attn = build(MIXED)
    with pytest.raises(ValueError, match=rf"\(B, {N}, {D}\)") as err:
        attn(torch.zeros(shape))
    assert str(tuple(shape)) in str(err.value)


TMP = "tmp_canvas_attention_test"


class TmpAttention(CrossAttention):
    """A third-party type, installed in-process for one test."""

    name = TMP


class TmpPlugin:
    @staticmethod
    @hookimpl
    def register_attention_types(registry) -> None:
        registry.add(TMP, TmpAttention)


@pytest.fixture
def tmp_type() -> Iterator[str]:
    name = register_plugin(TmpPlugin(), name="tmp-canvas-attention-test")
    try:
        yield TMP
    finally:
        if TMP in get_registry().attention_types:
            unregister_plugin(name)


def test_installed_third_party_type_runs_and_uninstalled_is_an_error(tmp_type: str) -> None:
    layout = CanvasLayout(
        T=2,
        H=2,
        W=2,
        d_model=D,
        regions={"src": RegionSpec((0, 2, 0, 1, 0, 2), default_attn=tmp_type), "dst": (0, 2, 1, 2, 0, 2)},
    )
    by_default = CanvasTopology([Connection("dst", "dst"), Connection("src", "dst")])
    by_fn = CanvasTopology([Connection("dst", "src", fn=tmp_type)])
    for topo in (by_default, by_fn):
        attn = CanvasAttention(layout, topo, n_heads=HEADS)
        assert tmp_type in [g.fn for g in attn.groups]
        op = next(g.op for g in attn.groups if g.fn == tmp_type)
        assert isinstance(op, TmpAttention)
        assert attn(torch.randn(1, layout.num_positions, D)).shape == (1, layout.num_positions, D)

    unregister_plugin("tmp-canvas-attention-test")
    installed = get_registry().attention_types.names()
    assert tmp_type not in installed
    for topo, label in ((by_default, "connection 'src'->'dst'"), (by_fn, "connection 'dst'->'src'")):
        with pytest.raises(UnknownAttentionTypeError) as err:
            CanvasAttention(layout, topo, n_heads=HEADS)
        msg = str(err.value)
        assert label in msg
        assert repr(tmp_type) in msg
        listed = msg.split("installed types:", 1)[1]
        assert [t.strip() for t in listed.split(",")] == installed
        assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_bad_head_count_is_a_validation_error() -> None:
    with pytest.raises(CanvasValidationError, match="n_heads"):
        CanvasAttention(LAYOUT, CanvasTopology(MIXED), d_model=D, n_heads=5)


def test_every_type_is_an_attention_type_module() -> None:
    for entry in get_registry().attention_types.entries():
        assert issubclass(entry.obj, AttentionType), entry.name
        assert entry.obj.name == entry.name
