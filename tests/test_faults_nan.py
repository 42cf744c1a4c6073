"""Fault injection, contained NaNs: a non-finite value at one position reaches exactly the outputs the mask
lets read it, in every kernel and through ``CanvasAttention`` as a whole; non-finite evaluation data stops
with the training error.

The rule (``canvas_engineering.attention.kernels``): output row ``i`` is non-finite exactly when a key ``i``
may read holds a non-finite key or value, or query ``i`` itself is non-finite (also when ``i`` reads no
key: the bad token is never hidden). Every other row equals what the kernel computes without the bad value,
and gradients of a loss over those rows are finite everywhere (the bad position gets 0).

NaN, +inf and -inf are placed in every region of the tiny multi-region canvas (video 4x4, action and reward
one position each, two unassigned positions per frame; ``causal_temporal``), at frame 2, so some positions
read them (frames 2 and 3) and most do not. Expected rows come from the plan's ``dense_allowed``.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from canvas_fixtures import FORMATS, tiny_batch, tiny_schema

from canvas_engineering import CanvasAttention, CanvasModule, CanvasTopology, Connection, compile_topology
from canvas_engineering.attention.kernels import softmax_attention
from canvas_engineering.errors import CanvasValidationError, NonFiniteLossError

KERNELS = ("dense", "tiled", "flex", "partitioned")
TRAINABLE = ("dense", "tiled", "partitioned")  # flex backward is refused on CPU (checked below)
VALUES = (math.nan, math.inf, -math.inf)
REGIONS = ("video", "action", "reward", None)  # None: an unassigned position

SCHEMA = tiny_schema()
LAYOUT = SCHEMA.layout
PLAN = compile_topology(LAYOUT, SCHEMA.topology)
ALL = list(range(len(SCHEMA.topology.connections)))


def position(region: str | None, frame: int = 2) -> int:
    """A canvas position of ``region`` (or an unassigned one) at ``frame``."""
    if region is None:
        ids = LAYOUT.position_region_ids
        return int(((ids == len(LAYOUT.regions)) & (LAYOUT.position_frames == frame)).nonzero()[0])
    t, h, w = LAYOUT.region_size(region)
    return int(LAYOUT.region_indices(region)[frame * h * w + (h * w) // 2])


def non_finite_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., n, d) -> (..., n) bool: the row holds a NaN or an inf."""
    return ~torch.isfinite(x).all(-1)


# -- kernels -----------------------------------------------------------------------------------


def kernel_inputs(seed: int = 0):
    mask = PLAN.group_mask(ALL)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, mask.num_queries, 8, generator=g)
    k = torch.randn(2, 2, mask.num_keys, 8, generator=g)
    v = torch.randn(2, 2, mask.num_keys, 8, generator=g)
    return mask, q, k, v


def poisoned(mask, q, k, v, p: int, where: str, value: float):
    """Copies with ``value`` at canvas position ``p`` in batch 0, head 1 of the tensors named in ``where``."""
    q, k, v = q.clone(), k.clone(), v.clone()
    qi = (mask.q_positions == p).nonzero().squeeze(1)
    kj = (mask.k_positions == p).nonzero().squeeze(1)
    if "q" in where:
        q[0, 1, qi] = value
    if "k" in where:
        k[0, 1, kj] = value
    if "v" in where:
        v[0, 1, kj] = value
    return q, k, v


def expected_rows(mask, p: int, where: str) -> torch.Tensor:
    """(nq,) bool: query rows that may read position ``p``'s key/value, plus ``p``'s own query row."""
    rows = torch.zeros(mask.num_queries, dtype=torch.bool)
    kj = (mask.k_positions == p).nonzero().squeeze(1)
    if ("k" in where or "v" in where) and kj.numel():
        rows |= mask.dense_allowed()[:, kj].any(1)
    if "q" in where:
        rows |= mask.q_positions == p
    return rows


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("region", REGIONS[:3])
@pytest.mark.parametrize("where", ["qkv", "q", "k", "v"])
def test_a_kernel_lets_a_non_finite_value_reach_exactly_the_rows_that_may_read_it(
    kernel: str, value: float, region: str, where: str
) -> None:
    mask, q, k, v = kernel_inputs()
    p = position(region)
    with torch.no_grad():
        clean = softmax_attention(q, k, v, mask, kernel=kernel)
        out = softmax_attention(*poisoned(mask, q, k, v, p, where, value), mask, kernel=kernel)
    want = expected_rows(mask, p, where)
    assert 0 < int(want.sum()) < mask.num_queries  # some rows read it, most do not
    assert torch.equal(non_finite_rows(out[0, 1]), want)
    assert bool(torch.isnan(out[0, 1][want]).all())  # never hidden: every value of a reading row
    # every other row, head and batch element is what the kernel computes without the bad value
    torch.testing.assert_close(out[0, 1][~want], clean[0, 1][~want], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[:, 0], clean[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[1], clean[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kernel", TRAINABLE)
@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("region", REGIONS[:3])
def test_kernel_gradients_of_the_rows_that_cannot_read_it_are_finite_and_unchanged(
    kernel: str, value: float, region: str
) -> None:
    mask, q, k, v = kernel_inputs(seed=1)
    p = position(region)
    keep = ~expected_rows(mask, p, "qkv")  # rows that cannot read the bad position
    weight = torch.randn(mask.num_queries, 8, generator=torch.Generator().manual_seed(2)) * keep[:, None]

    def grads(inputs):
        inputs = [t.clone().requires_grad_(True) for t in inputs]
        out = softmax_attention(*inputs, mask, kernel=kernel)
        (out[0, 1].masked_fill(~keep[:, None], 0.0) * weight).sum().backward()
        return [t.grad for t in inputs]

    zeroed = poisoned(mask, q, k, v, p, "qkv", 0.0)  # the bad position holding 0: what the rows read
    for got, want in zip(grads(poisoned(mask, q, k, v, p, "qkv", value)), grads(zeroed), strict=True):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_flex_refuses_to_train_on_the_cpu_by_name() -> None:
    mask, q, k, v = kernel_inputs()
    with pytest.raises(CanvasValidationError, match=r"kernel 'flex' cannot train on CPU"):
        softmax_attention(q.requires_grad_(True), k, v, mask, kernel="flex")


def test_rows_reading_counts_only_flagged_keys_per_batch_and_head() -> None:
    mask = PLAN.group_mask(ALL)
    flags = torch.zeros(2, 3, mask.num_keys, dtype=torch.bool)
    p, r = position("video"), position("reward", frame=4)
    flags[0, 1, (mask.k_positions == p).nonzero().squeeze(1)] = True
    flags[1, 2, (mask.k_positions == r).nonzero().squeeze(1)] = True
    rows = mask.rows_reading(flags)
    allowed = mask.dense_allowed()
    assert rows.shape == (2, 3, mask.num_queries)
    assert torch.equal(rows[0, 1], allowed[:, mask.k_positions == p].any(1))
    assert torch.equal(rows[1, 2], allowed[:, mask.k_positions == r].any(1))
    assert int(rows.sum()) == int(rows[0, 1].sum() + rows[1, 2].sum())
    window = lambda qi, ki: (qi - ki).abs() <= 3  # noqa: E731 - a position-level extra mask
    near = mask.rows_reading(flags, window)
    qi = torch.arange(mask.num_queries)[:, None]
    ki = torch.arange(mask.num_keys)[None, :]
    assert torch.equal(near[1, 2], (allowed & window(qi, ki))[:, mask.k_positions == r].any(1))
    with pytest.raises(CanvasValidationError, match=r"keys of shape \(3,\) must end in nk=108"):
        mask.rows_reading(torch.zeros(3, dtype=torch.bool))


# -- CanvasAttention ---------------------------------------------------------------------------


def module_expected(p: int) -> torch.Tensor:
    """(N,) bool: positions that may read ``p``, plus ``p`` itself when it is a query."""
    rows = PLAN.dense_allowed()[:, p].clone()
    rows[p] |= bool((PLAN.group_mask(ALL).q_positions == p).any())
    return rows


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("region", REGIONS)
def test_canvas_attention_lets_a_non_finite_token_reach_exactly_the_positions_that_may_read_it(
    kernel: str, value: float, region: str | None
) -> None:
    torch.manual_seed(0)
    attn = CanvasAttention(LAYOUT, SCHEMA.topology, kernel=kernel)  # d_model 32, 4 heads
    x = torch.randn(2, LAYOUT.num_positions, LAYOUT.d_model)
    p = position(region)
    bad = x.clone()
    bad[0, p] = value
    with torch.no_grad():
        clean, out = attn(x), attn(bad)
    want = module_expected(p)
    if region is None:
        assert not bool(want.any())  # an unassigned position is nobody's key: it reaches nothing
    else:
        assert 0 < int(want.sum()) < LAYOUT.num_positions
    assert torch.equal(non_finite_rows(out[0]), want)
    torch.testing.assert_close(out[0][~want], clean[0][~want], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[1], clean[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kernel", TRAINABLE)
@pytest.mark.parametrize("region", REGIONS[:3])
def test_canvas_attention_input_gradients_stay_finite_outside_the_reach(kernel: str, region: str) -> None:
    torch.manual_seed(0)
    attn = CanvasAttention(LAYOUT, SCHEMA.topology, kernel=kernel)
    x = torch.randn(2, LAYOUT.num_positions, LAYOUT.d_model)
    p = position(region)
    keep = ~module_expected(p)

    def grad(tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.clone().requires_grad_(True)
        attn(tokens)[:, keep].square().sum().backward()
        return tokens.grad

    bad = x.clone()
    bad[0, p] = math.nan
    zeroed = x.clone()
    zeroed[0, p] = 0.0
    got = grad(bad)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, grad(zeroed), atol=1e-5, rtol=1e-4)
    assert float(got[0, p].abs().max()) == 0.0  # nothing the loss sees depends on the bad token


def _write_mode_attention(kernel: str) -> CanvasAttention:
    """Four groups: (cross, add), (sigmoid, gate), (local window 1, add) and (cross, replace)."""
    conns = [
        Connection("video", "video", t_src=0, t_dst=0),  # cross, add
        Connection("video", "action", t_src=0, t_dst=-1, fn="sigmoid_attention"),  # gate
        Connection("action", "video", t_src=0, t_dst=0, fn="local_attention"),  # add, overridden by replace
        Connection("action", "action"),  # cross, replace
        Connection("reward", "video", t_src=0, t_dst=-1),  # cross, replace
        Connection("reward", "reward"),  # cross, add, overridden by replace
    ]
    modes = ["add", "gate", "add", "replace", "replace", "add"]
    torch.manual_seed(0)
    return CanvasAttention(
        LAYOUT, CanvasTopology(conns), kernel=kernel, write_modes=modes, type_config={"local_attention": {"window": 1}}
    )


def _group_allowed(attn: CanvasAttention, group) -> torch.Tensor:
    """(N, N) bool canvas-level pairs a group may read, its position-level window included."""
    n = LAYOUT.num_positions
    allowed = group.mask.dense_allowed()
    if group.fn == "local_attention":
        qc, kc = group.mask.q_coords, group.mask.k_coords
        near = (qc[:, None, 1:3] - kc[None, :, 1:3]).abs() <= 1  # (nq, nk, h and w)
        allowed = allowed & near.all(-1)
    out = torch.zeros(n, n, dtype=torch.bool)
    out[group.mask.q_positions[:, None], group.mask.k_positions[None, :]] = allowed
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("region", REGIONS[:3])
def test_groups_and_write_modes_keep_a_non_finite_token_to_the_positions_whose_output_reads_it(
    kernel: str, region: str
) -> None:
    attn = _write_mode_attention(kernel)
    assert sorted((g.fn, g.write_mode) for g in attn.groups) == [
        ("cross_attention", "add"), ("cross_attention", "replace"), ("local_attention", "add"),
        ("sigmoid_attention", "gate"),
    ]  # fmt: skip
    n = LAYOUT.num_positions
    x = torch.randn(2, n, LAYOUT.d_model, generator=torch.Generator().manual_seed(3))
    p = position(region)
    bad = x.clone()
    bad[0, p] = math.nan
    with torch.no_grad():
        clean, out = attn(x), attn(bad)
    # what counts at i: the replace groups where one writes i, else the add and gate groups
    want = torch.zeros(n, dtype=torch.bool)
    for group in attn.groups:
        counts = attn.replace_mask if group.write_mode == "replace" else ~attn.replace_mask
        writes = torch.zeros(n, dtype=torch.bool)
        writes[group.mask.q_positions] = True
        reads = _group_allowed(attn, group)[:, p] | (torch.arange(n) == p)
        want |= counts & writes & reads
    assert bool(want.any())
    assert torch.equal(non_finite_rows(out[0]), want)
    torch.testing.assert_close(out[0][~want], clean[0][~want], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[1], clean[1], atol=1e-6, rtol=1e-5)


def test_the_local_window_narrows_what_a_non_finite_token_reaches() -> None:
    # the window (position-level) keeps the bad video token away from action queries the class mask allows
    attn = _write_mode_attention("tiled")
    local = next(g for g in attn.groups if g.fn == "local_attention")
    p = int(LAYOUT.region_indices("video")[2 * 16])  # frame 2, row 0, column 0: outside action's window
    class_level = torch.zeros(LAYOUT.num_positions, LAYOUT.num_positions, dtype=torch.bool)
    class_level[local.mask.q_positions[:, None], local.mask.k_positions[None, :]] = local.mask.dense_allowed()
    assert bool(class_level[:, p].any()) and not bool(_group_allowed(attn, local)[:, p].any())
    x = torch.randn(1, LAYOUT.num_positions, LAYOUT.d_model)
    x[0, p] = math.nan
    with torch.no_grad():
        out = local(x)  # the group alone: its queries are the action positions
    assert bool(torch.isfinite(out).all())


# -- evaluation data ---------------------------------------------------------------------------


def _module() -> CanvasModule:
    torch.manual_seed(0)
    return CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2})


def _trainer() -> pl.Trainer:
    flags = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    return pl.Trainer(accelerator="cpu", logger=False, **flags)


@pytest.mark.parametrize(
    ("stage", "name"), [("validate", "validation"), ("test", "test")]
)
@pytest.mark.parametrize(("region", "index"), [("video", (1, 2, 0, 3, 3)), ("reward", (0, 1, 0))])
def test_non_finite_evaluation_data_raises_the_training_error(stage: str, name: str, region: str, index: tuple) -> None:
    # an input frame (t < t_current) that a one-block model's loss never reads: the data check still fires
    batch = tiny_batch()
    batch[region][index] = math.nan
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    with pytest.raises(NonFiniteLossError, match=rf"^non-finite {name} loss nan at step 0 .*check the {name} data"):
        getattr(_trainer(), stage)(_module(), loader)


def test_finite_evaluation_data_still_logs_a_finite_loss() -> None:
    loader = torch.utils.data.DataLoader([tiny_batch()], batch_size=None)
    (result,) = _trainer().validate(_module(), loader)
    assert math.isfinite(result["val/loss"])


def test_non_finite_data_in_a_region_without_loss_weight_is_named() -> None:
    # isolated regions: the bad reward token reaches only reward predictions, which weigh nothing;
    # the loss used to skip the region and stay finite
    from canvas_engineering import CanvasLayout, CanvasSchema, RegionSpec

    layout = CanvasLayout(T=6, H=5, W=4, d_model=32, t_current=3, regions={
        "video": (0, 6, 0, 4, 0, 4), "action": (0, 6, 4, 5, 0, 1),
        "reward": RegionSpec((0, 6, 4, 5, 2, 3), is_output=False)})  # fmt: skip
    torch.manual_seed(0)
    m = CanvasModule(CanvasSchema(layout, CanvasTopology.isolated(list(layout.regions))), FORMATS,
                     backbone_config={"depth": 1, "n_heads": 2})  # fmt: skip
    batch = tiny_batch()
    batch["reward"][0, 0, 0] = math.inf
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    rule = r"non-finite validation loss .*video=[\d.]+, action=[\d.]+, reward=nan"
    with pytest.raises(NonFiniteLossError, match=rule):
        _trainer().validate(m, loader)
