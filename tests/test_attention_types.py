"""Properties every registered attention type must have, run through ``CanvasAttention``.

Parametrised over ``get_registry().attention_types`` (so types installed later by third
parties are covered too). The canvas below has several regions, a period-2 region, temporal
offsets, interpolation, weights != 1 (0.5 and 2), a region whose last frame reads nothing
and an unassigned area. Checked for every type, with and without gradients:

* output shape, dtype (float32 and float64) and finiteness; 0 where a position is no query;
* gradients reach every parameter (finite, not all zero);
* the mask: changing any key a query may not see, by any amount, leaves that query's
  output unchanged (every kernel); changing allowed keys changes it (score-based types,
  and the built-ins whose read set is documented);
* the documented extra restrictions (local window, causal scans, aligned copy slot, ...);
* ``none`` contributes nothing;
* connection weights: log-weight biases for score-based types, output scales otherwise;
* ``beta`` multiplies the logits of score-based types;
* the kernels (dense masked SDPA reference, tile-packed SDPA, FlexAttention on CPU without
  gradients) agree, gradients included.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from canvas_engineering.attention.canvas_attention import CanvasAttention, position_coords
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.topology import CanvasTopology, Connection
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.plugin_host.host import get_registry

TYPES = sorted(get_registry().attention_types.names())
D = 32
HEADS = 2

LAYOUT = CanvasLayout(
    T=6,
    H=5,
    W=5,
    d_model=D,
    regions={
        "a": (0, 6, 0, 3, 0, 5),
        "b": (0, 6, 3, 4, 0, 2),
        "c": RegionSpec((0, 3, 4, 5, 0, 3), period=2),  # real times 0, 2, 4
        "d": (0, 6, 4, 5, 3, 4),  # reads the *next* frame of a; its last frame reads nothing
    },
)
N = LAYOUT.num_positions
COORDS = position_coords(LAYOUT)  # t, h, w, real time, slot

#: built-in types that normalise over the keys (a common factor on all weights of a row cancels)
NORMALISED = {
    "cross_attention",
    "cosine_attention",
    "gated",
    "mixture",
    "cogvideox",
    "local_attention",
    "random_fixed",
    "sparse_attention",
    "perceiver",
    "linear_attention",
    "rwkv",
}
#: built-in types whose docs say beta is ignored
BETA_IGNORED = {"pooling", "copy", "mamba", "hyena", "none"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny: intra-op threads only add contention (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def type_cls(fn: str) -> type:
    return get_registry().attention_types[fn].obj


def is_score_based(fn: str) -> bool:
    return bool(type_cls(fn).score_based)


def connections(fn: str | None, scale: float = 1.0) -> list[Connection]:
    return [
        Connection("a", "a", t_src=0, t_dst=0, weight=1.0 * scale, fn=fn),
        Connection("a", "b", t_src=0, t_dst=-1, weight=0.5 * scale, fn=fn),
        Connection("b", "c", t_src=0, t_dst=0, weight=1.0 * scale, temporal_fill="interpolate", fn=fn),
        Connection("c", "a", weight=1.0 * scale, fn=fn),
        Connection("b", "b", t_src=0, t_dst=-2, weight=1.0 * scale, fn=fn),
        Connection("d", "a", t_src=0, t_dst=1, weight=2.0 * scale, fn=fn),
    ]


def build(fn: str, kernel: str = "tiled", scale: float = 1.0, seed: int = 0, **config: object) -> CanvasAttention:
    torch.manual_seed(seed)
    type_config = {fn: config} if config else None
    return CanvasAttention(
        LAYOUT, CanvasTopology(connections(fn, scale)), d_model=D, n_heads=HEADS, kernel=kernel, type_config=type_config
    )


def tokens(batch: int = 2, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N, D, generator=g, dtype=dtype)


def query_positions(attn: CanvasAttention) -> torch.Tensor:
    return torch.unique(torch.cat([g.q_positions for g in attn.groups]))


def one_query_per_class(seed: int = 0) -> torch.Tensor:
    """One random position of every (region, frame) class, unassigned area included."""
    g = torch.Generator().manual_seed(seed)
    cls = LAYOUT.position_region_ids * LAYOUT.T + LAYOUT.position_frames
    picks = []
    for c in torch.unique(cls).tolist():
        members = (cls == c).nonzero().squeeze(1)
        picks.append(int(members[torch.randint(len(members), (1,), generator=g)]))
    return torch.tensor(picks)


def read_set(fn: str, allowed: torch.Tensor, i: int) -> torch.Tensor | None:
    """(N,) bool: the allowed keys ``fn`` documents it reads for query ``i`` (None: unknown subset)."""
    j = torch.arange(N)
    if fn == "local_attention":  # window 1 (the default, set explicitly in the tests)
        near = ((COORDS[:, 1] - COORDS[i, 1]).abs() <= 1) & ((COORDS[:, 2] - COORDS[i, 2]).abs() <= 1)
        return allowed & near
    if fn in {"mamba", "hyena"}:  # causal scans over real time
        return allowed & (COORDS[:, 3] <= COORDS[i, 3])
    if fn == "copy":  # only the slot aligned with the query's slot in every allowed class
        area = torch.tensor([s.shape[1] * s.shape[2] for s in LAYOUT.regions.values()] + [1])
        n_slots = area[LAYOUT.position_region_ids[j]]
        return allowed & (COORDS[:, 4] == COORDS[i, 4] % n_slots)
    if fn == "random_fixed":
        return None
    return allowed


def config_for(fn: str) -> dict:
    return {"window": 1} if fn == "local_attention" else {}


def run(attn: CanvasAttention, x: torch.Tensor, kernel: str, beta: float = 1.0) -> torch.Tensor:
    attn.set_kernel(kernel)
    if kernel == "flex":
        with torch.no_grad():
            return attn(x, beta)
    return attn(x, beta).detach()


# -- construction ---------------------------------------------------------------------------


def test_bad_construction_is_a_validation_error() -> None:
    """``AttentionType``: a head count that does not divide d_model or a bad option raises CanvasValidationError."""
    wrong_type = []
    for fn in TYPES:
        with pytest.raises(CanvasValidationError, match="n_heads"):
            type_cls(fn)(D, 5)
        try:
            type_cls(fn)(D, HEADS, no_such_option=1)
        except CanvasValidationError as err:
            assert "no_such_option" in str(err)
        except Exception as err:
            wrong_type.append(f"{fn}: {type(err).__name__}")
        else:
            wrong_type.append(f"{fn}: accepted")
    assert not wrong_type, f"unknown options must raise CanvasValidationError: {wrong_type}"


# -- shape, dtype, zero outside the queries ---------------------------------------------


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn", TYPES, ids=TYPES)
def test_output_shape_dtype_and_zero_outside_queries(fn: str, dtype: torch.dtype, grad: bool) -> None:
    attn = build(fn, **config_for(fn)).to(dtype)
    x = tokens(batch=3, dtype=dtype).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = attn(x)
    assert out.shape == (3, N, D)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    others = torch.ones(N, dtype=torch.bool)
    others[query_positions(attn)] = False
    assert others.any()
    assert (out[:, others] == 0).all(), "positions that are no group's query must get exactly 0"
    if fn == "none":
        assert (out == 0).all()
    else:
        assert out[:, ~others].abs().max() > 1e-4, "the type produced no output at all"


@pytest.mark.parametrize("fn", TYPES, ids=TYPES)
def test_float64_matches_float32(fn: str) -> None:
    attn = build(fn, **config_for(fn))
    x = tokens()
    with torch.no_grad():
        out32 = attn(x)
        out64 = attn.double()(x.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, atol=1e-4, rtol=1e-4)


# -- gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["dense", "tiled"])
@pytest.mark.parametrize("fn", TYPES, ids=TYPES)
def test_gradients_reach_parameters(fn: str, kernel: str) -> None:
    attn = build(fn, kernel=kernel, **config_for(fn))
    x = tokens().requires_grad_(True)
    out = attn(x)
    params = [(n, p) for n, p in attn.named_parameters() if p.requires_grad]
    if fn == "none":
        assert not params
        assert (out == 0).all()
        return
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * r).sum().backward()
    assert x.grad is not None
    n_bad = int((~torch.isfinite(x.grad)).sum())
    assert n_bad == 0, f"{fn}/{kernel}: {n_bad} non-finite input gradient entries"
    assert x.grad.abs().max() > 0
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"{fn}/{kernel}: no gradient for {missing}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"{fn}/{kernel}: non-finite gradient for {bad}"
    if params:
        assert any(p.grad.abs().max() > 0 for _, p in params), f"{fn}/{kernel}: every parameter gradient is 0"


# -- the mask ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["dense", "tiled", "flex"])
@pytest.mark.parametrize("fn", TYPES, ids=TYPES)
def test_mask_invariance(fn: str, kernel: str) -> None:
    """Batch element b perturbs (by 100 * randn) every key blocked for its query i_b only."""
    attn = build(fn, **config_for(fn))
    allowed = attn.plan.dense_allowed()
    queries = one_query_per_class()
    g = torch.Generator().manual_seed(7)
    x = tokens(batch=len(queries))
    blocked_x = x.clone()
    for b, i in enumerate(queries.tolist()):
        blocked = ~allowed[i]
        blocked[i] = False  # x[i] is also the query token itself
        blocked_x[b, blocked] += 100 * torch.randn(int(blocked.sum()), D, generator=g)
    base = run(attn, x, kernel)
    moved = run(attn, blocked_x, kernel)
    leaks = []
    for b, i in enumerate(queries.tolist()):
        diff = (moved[b, i] - base[b, i]).abs().max().item()
        if diff > 1e-5:
            leaks.append((i, diff))
    assert not leaks, f"{fn}/{kernel}: queries (position, max diff) changed by blocked keys: {leaks}"


@pytest.mark.parametrize("fn", TYPES, ids=TYPES)
def test_allowed_keys_change_output(fn: str) -> None:
    """Perturbing the allowed keys a type reads changes the query; unread ones do not."""
    attn = build(fn, **config_for(fn))
    allowed = attn.plan.dense_allowed()
    queries = one_query_per_class()
    g = torch.Generator().manual_seed(11)
    x = tokens(batch=len(queries))
    read_x, unread_x = x.clone(), x.clone()
    reads = {}
    for b, i in enumerate(queries.tolist()):
        others = allowed[i].clone()
        others[i] = False
        read = read_set(fn, others, i)
        reads[i] = read
        if read is None:
            read = others
        read_x[b, read] += torch.randn(int(read.sum()), D, generator=g)
        unread = others & ~read
        unread_x[b, unread] += 100 * torch.randn(int(unread.sum()), D, generator=g)
    base = run(attn, x, "tiled")
    moved = run(attn, read_x, "tiled")
    still = run(attn, unread_x, "tiled")
    if fn == "none":
        assert (base == 0).all() and (moved == 0).all()
        return
    diffs = {i: (moved[b, i] - base[b, i]).abs().max().item() for b, i in enumerate(queries.tolist())}
    unread_diffs = {i: (still[b, i] - base[b, i]).abs().max().item() for b, i in enumerate(queries.tolist())}
    leaks = {i: d for i, d in unread_diffs.items() if d > 1e-5}
    assert not leaks, f"{fn}: allowed keys outside its documented read set leak into queries: {leaks}"
    asserted = is_score_based(fn) or fn in {"pooling", "copy", "mamba", "hyena"}
    if not asserted:
        return
    if reads[queries[0].item()] is None:  # a fixed random subset: some query must react
        assert max(diffs.values()) > 1e-4
        return
    checked = [i for i in diffs if reads[i].any() and (attn.groups[0].q_positions == i).any()]
    assert len(checked) >= 5
    dead = [(i, diffs[i]) for i in checked if diffs[i] <= 1e-4]
    assert not dead, f"{fn}: queries whose output ignores the allowed keys they read: {dead}"


def test_none_contributes_nothing() -> None:
    x = tokens()
    torch.manual_seed(0)
    plain = CanvasAttention(LAYOUT, CanvasTopology(connections("cross_attention")), d_model=D, n_heads=HEADS)
    torch.manual_seed(0)
    # the none edges come first: their group must not even shift the parameter initialisation
    with_none = CanvasAttention(
        LAYOUT,
        CanvasTopology(
            [Connection("c", "b", fn="none"), *connections("cross_attention"), Connection("a", "c", fn="none")]
        ),
        d_model=D,
        n_heads=HEADS,
    )
    assert sorted(g.fn for g in with_none.groups) == ["cross_attention", "none"]
    none_group = next(g for g in with_none.groups if g.fn == "none")
    assert sum(p.numel() for p in none_group.parameters()) == 0
    xr = x.clone().requires_grad_(True)
    out = with_none(xr)
    torch.testing.assert_close(out, plain(x), atol=0, rtol=0)
    assert (none_group(x) == 0).all()
    # gradients are those of the cross-attention group alone
    out.sum().backward()
    xp = x.clone().requires_grad_(True)
    plain(xp).sum().backward()
    torch.testing.assert_close(xr.grad, xp.grad, atol=1e-6, rtol=0)


# -- documented extra restrictions --------------------------------------------------------


def _copy_op_state(src: CanvasAttention, dst: CanvasAttention) -> None:
    missing, unexpected = dst.groups[0].op.load_state_dict(src.groups[0].op.state_dict(), strict=False)
    assert not unexpected


@pytest.mark.parametrize(
    ("fn", "config"),
    [("local_attention", {"window": 5}), ("random_fixed", {"keep": 1.0}), ("sparse_attention", {"top_k": 10_000})],
    ids=["local_window_covers_grid", "random_keep_all", "sparse_topk_all"],
)
def test_restricted_types_reduce_to_cross_attention(fn: str, config: dict) -> None:
    cross = build("cross_attention")
    other = build(fn, **config)
    _copy_op_state(cross, other)
    x = tokens()
    for kernel in ("dense", "tiled"):
        torch.testing.assert_close(run(other, x, kernel), run(cross, x, kernel), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("fn", "config"),
    [("local_attention", {"window": 1}), ("random_fixed", {"keep": 0.5}), ("sparse_attention", {"top_k": 2})],
)
def test_restricted_types_differ_from_cross_attention(fn: str, config: dict) -> None:
    cross = build("cross_attention")
    other = build(fn, **config)
    _copy_op_state(cross, other)
    x = tokens()
    assert (run(other, x, "dense") - run(cross, x, "dense")).abs().max() > 1e-3


def test_random_fixed_subset_is_fixed_and_saved() -> None:
    a = build("random_fixed", seed=0, keep=0.5)
    b = build("random_fixed", seed=5, keep=0.5)
    x = tokens()
    first = run(a, x, "tiled")
    torch.testing.assert_close(run(a, x, "tiled"), first, atol=0, rtol=0)
    assert (run(b, x, "tiled") - first).abs().max() > 1e-4  # another seed, other params
    b.load_state_dict(a.state_dict())  # the subset's seed travels with the state dict
    torch.testing.assert_close(run(b, x, "tiled"), first, atol=1e-6, rtol=0)
    torch.testing.assert_close(run(b, x, "dense"), first, atol=1e-5, rtol=0)


# -- connection weights ---------------------------------------------------------------------

#: one query region reading two key classes; everything within a local window of 1
SMALL = CanvasLayout(
    T=2, H=2, W=2, d_model=D, regions={"q": (0, 2, 0, 1, 0, 2), "k1": (0, 2, 1, 2, 0, 1), "k2": (0, 2, 1, 2, 1, 2)}
)


def small_attn(fn: str, w1: float, w2: float, seed: int = 0, **config: object) -> CanvasAttention:
    torch.manual_seed(seed)
    topo = CanvasTopology([Connection("q", "k1", weight=w1, fn=fn), Connection("q", "k2", weight=w2, fn=fn)])
    return CanvasAttention(SMALL, topo, d_model=D, n_heads=HEADS, type_config={fn: config} if config else None)


SCORE_TYPES = [t for t in TYPES if is_score_based(t)]
OTHER_TYPES = [t for t in TYPES if not is_score_based(t)]


@pytest.mark.parametrize("fn", SCORE_TYPES, ids=SCORE_TYPES)
def test_score_based_weights_are_log_biases(fn: str) -> None:
    x = torch.randn(3, SMALL.num_positions, D, generator=torch.Generator().manual_seed(2))
    qpos = SMALL.region_indices("q")
    with torch.no_grad():
        ones = small_attn(fn, 1.0, 1.0)(x)[:, qpos]
        skewed = small_attn(fn, 1.0, 0.5)(x)[:, qpos]
        halves = small_attn(fn, 0.5, 0.5)(x)[:, qpos]
    assert (skewed - ones).abs().max() > 1e-4, "a relative weight change must change the output"
    if fn in NORMALISED:  # a common factor on every weight of a row shifts all logits equally
        torch.testing.assert_close(halves, ones, atol=1e-5, rtol=1e-5)
    else:
        assert (halves - ones).abs().max() > 1e-4


@pytest.mark.parametrize("fn", OTHER_TYPES, ids=OTHER_TYPES)
def test_non_score_weights_scale_outputs(fn: str) -> None:
    x = tokens()
    with torch.no_grad():
        full = build(fn)(x)
        half = build(fn, scale=0.5)(x)
        double = build(fn, scale=2.0)(x)
    torch.testing.assert_close(half, 0.5 * full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(double, 2.0 * full, atol=1e-6, rtol=1e-5)
    if fn != "none":
        assert full.abs().max() > 1e-3


def test_sigmoid_attention_weights_scale_unnormalised_mass() -> None:
    """sigmoid_attention does not normalise: weight w scales each key's w * sigmoid(logit)."""
    x = torch.randn(3, SMALL.num_positions, D, generator=torch.Generator().manual_seed(2))
    qpos = SMALL.region_indices("q")
    one, half = small_attn("sigmoid_attention", 1.0, 1.0), small_attn("sigmoid_attention", 0.5, 0.5)
    bias = one.groups[0].op.out_proj.bias
    with torch.no_grad():
        torch.testing.assert_close(half(x)[:, qpos] - bias, 0.5 * (one(x)[:, qpos] - bias), atol=1e-6, rtol=1e-5)


def _heads(t: torch.Tensor) -> torch.Tensor:
    b, n, _ = t.shape
    return t.view(b, n, HEADS, D // HEADS).transpose(1, 2)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(("w1", "w2"), [(1.0, 1.0), (1.0, 0.5), (0.25, 3.0)])
@pytest.mark.parametrize("kernel", ["dense", "tiled", "flex"])
def test_cross_attention_by_hand(kernel: str, w1: float, w2: float, beta: float) -> None:
    """softmax(beta * q.k / sqrt(hd) + log w) v, written out: weight 0.5 = log(0.5) on the logit."""
    attn = small_attn("cross_attention", w1, w2).double()
    op = attn.groups[0].op
    x = torch.randn(2, SMALL.num_positions, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    qpos, k1, k2 = (SMALL.region_indices(r) for r in ("q", "k1", "k2"))
    keys = torch.cat([k1, k2])
    log_w = torch.tensor([math.log(w1)] * len(k1) + [math.log(w2)] * len(k2), dtype=torch.float64)
    with torch.no_grad():
        q = _heads(op.q_proj(x[:, qpos]))
        k = _heads(op.k_proj(x[:, keys]))
        v = _heads(op.v_proj(x[:, keys]))
        logits = beta * (q @ k.transpose(-1, -2)) / math.sqrt(D // HEADS) + log_w
        mass = logits.exp()  # unnormalised: a key of weight w carries w * exp(logit)
        o = (mass / mass.sum(-1, keepdim=True)) @ v
        expected = op.out_proj(o.transpose(1, 2).reshape(2, len(qpos), D))
        got = run(attn, x, kernel, beta)
    torch.testing.assert_close(got[:, qpos], expected, atol=1e-9, rtol=1e-7)
    rest = torch.ones(SMALL.num_positions, dtype=torch.bool)
    rest[qpos] = False
    assert (got[:, rest] == 0).all()


# -- beta ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", SCORE_TYPES, ids=SCORE_TYPES)
def test_beta_changes_score_based_outputs(fn: str) -> None:
    attn = build(fn, **config_for(fn))
    x = tokens()
    with torch.no_grad():
        one, two, again = attn(x, 1.0), attn(x, 2.0), attn(x)
    torch.testing.assert_close(again, one, atol=0, rtol=0)  # beta defaults to 1
    assert (two - one).abs().max() > 1e-4


@pytest.mark.parametrize("fn", sorted(BETA_IGNORED & set(TYPES)))
def test_beta_is_ignored_where_documented(fn: str) -> None:
    attn = build(fn)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(attn(x, 3.0), attn(x, 1.0), atol=0, rtol=0)


@pytest.mark.parametrize("kernel", ["dense", "tiled", "flex"])
def test_beta_multiplies_cross_attention_logits(kernel: str) -> None:
    """beta=2 equals doubling the query projection (weights and bias)."""
    attn = build("cross_attention")
    x = tokens()
    sharp = run(attn, x, kernel, beta=2.0)
    op = attn.groups[0].op
    with torch.no_grad():
        op.q_proj.weight.mul_(2.0)
        op.q_proj.bias.mul_(2.0)
    torch.testing.assert_close(run(attn, x, kernel, beta=1.0), sharp, atol=1e-5, rtol=1e-5)


# -- kernels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", TYPES, ids=TYPES)
def test_kernels_agree(fn: str) -> None:
    attn = build(fn, **config_for(fn))
    x = tokens()
    ref = run(attn, x, "dense")
    for kernel in ("tiled", "flex", "auto"):
        got = run(attn, x, kernel)
        diff = (got - ref).abs().max().item()
        assert diff <= 1e-4, f"{fn}: kernel {kernel!r} differs from the dense reference by {diff:.3g}"

    grads = {}
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    for kernel in ("dense", "tiled"):
        attn.set_kernel(kernel)
        attn.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        out = attn(xr)
        if not out.requires_grad:  # nothing depends on anything (none)
            assert fn == "none"
            return
        (out * r).sum().backward()
        grads[kernel] = {"x": xr.grad, **{n: p.grad for n, p in attn.named_parameters() if p.grad is not None}}
    assert grads["dense"].keys() == grads["tiled"].keys()
    for name, g in grads["dense"].items():
        diff = (grads["tiled"][name] - g).abs().max().item()
        assert diff <= 1e-4, f"{fn}: tiled gradient of {name} differs from the dense reference by {diff:.3g}"
