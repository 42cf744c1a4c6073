"""Fault injection, bounded numbers: every number that reaches a mask, a grid or a kernel is refused by name
when it cannot be represented, and accepted (NumPy scalars included) when it can.

* connection weights lie in ``[MIN_CONNECTION_WEIGHT, MAX_CONNECTION_WEIGHT]`` = ``[1e-4, 1e4]``, so they stay
  finite and non-zero in float32, bfloat16 and float16 masks (1e39 used to become inf, 1e-46 to become 0);
  an ``INTERPOLATE`` share that would vanish in float16 is refused at compile time, and a huge order no
  longer gives NaN;
* ``beta`` is finite and > 0 wherever it enters (``CanvasAttention.forward``, the kernels, ``set_betas``);
* grids hold at most ``MAX_POSITIONS`` = 2**24 positions and are refused at construction;
* dense masks beyond ``DENSE_MASK_BUDGET`` (2 GiB) are refused with a pointer to the block plan;
* NumPy integers, floats and bools pass wherever the Python ones do; bools never pass as numbers.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from canvas_engineering import (
    CanvasAttention,
    CanvasLayout,
    CanvasSchema,
    CanvasTopology,
    Connection,
    RegionSpec,
    compile_topology,
)
from canvas_engineering.attention.kernels import score_attention, softmax_attention
from canvas_engineering.compilation.attention_mask import DENSE_MASK_BUDGET
from canvas_engineering.compilation.compiler import compile_attention_mask
from canvas_engineering.declare.layout import MAX_D_MODEL, MAX_POSITIONS
from canvas_engineering.declare.spatiotemporal_canvas import SpatiotemporalCanvas
from canvas_engineering.declare.topology import MAX_CONNECTION_WEIGHT, MIN_CONNECTION_WEIGHT
from canvas_engineering.errors import (
    CanvasValidationError,
    ConnectionValidationError,
    LayoutValidationError,
    RegionValidationError,
)
from canvas_engineering.models.looped import LoopedBlockWrapper
from canvas_engineering.validation import check_bool, check_finite_float, check_int, is_finite_number, is_int

KERNELS = ("dense", "tiled", "flex", "partitioned")


def _three_regions() -> CanvasLayout:
    return CanvasLayout(
        T=4, H=2, W=4, d_model=16, regions={"a": (0, 4, 0, 1, 0, 4), "b": (0, 4, 1, 2, 0, 2), "c": (0, 2, 1, 2, 2, 4)}
    )


def _extreme_topology() -> CanvasTopology:
    """Every connection at a weight limit, one of them interpolating into a slow region."""
    lo, hi = MIN_CONNECTION_WEIGHT, MAX_CONNECTION_WEIGHT
    return CanvasTopology(
        [
            Connection("a", "a", weight=hi),
            Connection("a", "b", weight=lo),
            Connection("b", "c", weight=lo, t_src=0, t_dst=0, temporal_fill="interpolate"),
            Connection("c", "a", weight=hi, t_src=0, t_dst=-1),
            Connection("b", "b"),
        ]
    )


# -- connection weights --------------------------------------------------------------------------


def test_weight_limits_are_the_documented_ones() -> None:
    assert (MIN_CONNECTION_WEIGHT, MAX_CONNECTION_WEIGHT) == (1e-4, 1e4)
    assert Connection("a", "b", weight=1e-4).weight == 1e-4
    assert Connection("a", "b", weight=1e4).weight == 1e4


@pytest.mark.parametrize("weight", [1e39, 1e-46, 1e5, 9.9e-5, 65504.0, 1e-300])
def test_unrepresentable_weight_is_refused_naming_the_connection(weight: float) -> None:
    with pytest.raises(
        ConnectionValidationError,
        match=rf"^connection 'cam'->'arm': weight {re.escape(repr(weight))} must be a finite number > 0 "
        r"\(use fn='none' to disable an edge\) in \[MIN_CONNECTION_WEIGHT=0\.0001, MAX_CONNECTION_WEIGHT=10000\]",
    ):
        Connection("cam", "arm", weight=weight)


def test_unrepresentable_weight_in_a_schema_file_is_refused_naming_the_connection() -> None:
    layout = _three_regions()
    data = CanvasSchema(layout, CanvasTopology.dense(["a", "b"])).to_dict()
    data["topology"]["connections"][1]["weight"] = 1e39
    with pytest.raises(CanvasValidationError, match=r"connection 'a'->'b': weight 1e\+39 must be a finite number > 0"):
        CanvasSchema.from_dict(data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weights_at_the_limits_are_finite_and_non_zero_in_every_mask_dtype(dtype: torch.dtype) -> None:
    plan = compile_topology(_three_regions(), _extreme_topology())
    allowed = plan.allowed_table
    table = plan.weight_table.to(dtype)
    assert bool(torch.isfinite(table).all()) and bool((table[allowed] > 0).all())
    assert bool(torch.isfinite(table[allowed].float().log()).all())
    assert float(plan.weight_table.max()) == 1e4 and float(plan.weight_table[allowed].min()) >= 2.0**-24
    mask = plan.group_mask(range(5))
    bias, valid = mask.dense_bias("cpu", dtype)
    assert bool(torch.isfinite(bias[mask.dense_allowed()]).all())
    for part in mask.device_partitions("cpu", dtype).singles:
        assert part.bias is None or not bool(torch.isnan(part.bias).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weights_at_the_limits_give_finite_equal_outputs_in_every_kernel(dtype: torch.dtype) -> None:
    layout, topology = _three_regions(), _extreme_topology()
    outs = {}
    for kernel in KERNELS:
        torch.manual_seed(0)
        attn = CanvasAttention(layout, topology, kernel=kernel, n_heads=2).to(dtype)
        x = torch.randn(2, layout.num_positions, 16, dtype=dtype)
        with torch.no_grad():
            outs[kernel] = attn(x).float()
        assert bool(torch.isfinite(outs[kernel]).all()), kernel
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for kernel in KERNELS[1:]:
        torch.testing.assert_close(outs[kernel], outs["dense"], atol=tol, rtol=tol)


def test_an_interpolation_share_that_would_vanish_in_float16_is_refused_naming_the_connection() -> None:
    # k holds real frames 0 and 4: q at real time 1 reads k's frame 1 with share 1 / (1 + 3**order)
    regions = {"q": (0, 8, 0, 1, 0, 1), "k": RegionSpec((0, 2, 0, 1, 1, 2), period=4)}
    layout = CanvasLayout(T=8, H=1, W=2, d_model=8, regions=regions)
    fine = Connection("q", "k", t_src=0, t_dst=0, temporal_fill="interpolate", interpolation_order=2)
    assert bool(torch.isfinite(compile_topology(layout, CanvasTopology([fine])).weight_table).all())
    steep = Connection("q", "k", t_src=0, t_dst=0, temporal_fill="interpolate", interpolation_order=100)
    with pytest.raises(
        ConnectionValidationError,
        match=r"^connection 'q'->'k': interpolation_order=100 gives canvas frame \d+ \(read by query frame \d+\) "
        r"the weight 10\*\*-\d+\.\d, below MIN_MASK_WEIGHT=2\*\*-24",
    ):
        compile_topology(layout, CanvasTopology([steep]))


def test_a_huge_interpolation_order_between_equidistant_frames_splits_evenly_instead_of_nan() -> None:
    # q reads real times 0, 2, 4, 6; k holds 0 and 4: real time 2 sits 2 from both k frames.
    # d**-2000 underflows for both, and a / (a + b) used to put 0 / 0 = NaN in the mask.
    layout = CanvasLayout(
        T=8, H=1, W=2, d_model=8,
        regions={"q": RegionSpec((0, 4, 0, 1, 0, 1), period=2), "k": RegionSpec((0, 2, 0, 1, 1, 2), period=4)},
    )  # fmt: skip
    conn = Connection("q", "k", t_src=0, t_dst=0, temporal_fill="interpolate", interpolation_order=2000)
    plan = compile_topology(layout, CanvasTopology([conn]))
    weights = plan.dense_weights()
    assert bool(torch.isfinite(weights).all())
    q_real_2 = int(layout.region_indices("q")[1])  # the q frame at real time 2
    k0, k1 = (int(i) for i in layout.region_indices("k"))
    assert weights[q_real_2, k0] == 0.5 and weights[q_real_2, k1] == 0.5


@pytest.mark.parametrize("offset", [10**30, -(2**24) - 1, 2**24 + 1])
def test_frame_offsets_beyond_the_canvas_limit_are_refused(offset: int) -> None:
    with pytest.raises(ConnectionValidationError, match=rf"t_src {offset} must be an integer frame offset or None"):
        Connection("a", "b", t_src=offset)
    assert Connection("a", "b", t_dst=-(2**24)).t_dst == -(2**24)


# -- beta --------------------------------------------------------------------------------------


BAD_BETAS = [math.nan, math.inf, -math.inf, 0.0, -1.0, True, "2", None, np.float32("nan")]


@pytest.mark.parametrize("beta", BAD_BETAS)
def test_canvas_attention_refuses_a_beta_that_is_not_finite_and_positive(beta: object) -> None:
    layout = _three_regions()
    attn = CanvasAttention(layout, CanvasTopology.dense(["a", "b", "c"]), n_heads=2)
    x = torch.randn(1, layout.num_positions, 16)
    rule = rf"^CanvasAttention\.forward: beta={re.escape(repr(beta))} must be a finite number > 0$"
    with pytest.raises(CanvasValidationError, match=rule):
        attn(x, beta)  # type: ignore[arg-type]


@pytest.mark.parametrize("beta", BAD_BETAS)
def test_the_kernels_refuse_a_beta_that_is_not_finite_and_positive(beta: object) -> None:
    plan = compile_topology(_three_regions(), CanvasTopology.dense(["a", "b"]))
    mask = plan.group_mask([0, 1, 2, 3])
    q = torch.randn(1, 1, mask.num_queries, 4)
    k = torch.randn(1, 1, mask.num_keys, 4)
    with pytest.raises(CanvasValidationError, match=r"^softmax_attention: beta=.* must be a finite number > 0$"):
        softmax_attention(q, k, k, mask, beta)  # type: ignore[arg-type]
    with pytest.raises(CanvasValidationError, match=r"^score_attention: beta=.* must be a finite number > 0$"):
        score_attention(q, k, k, mask, lambda s, w: w * torch.sigmoid(s), beta)  # type: ignore[arg-type]


def test_numpy_and_tensor_betas_act_like_the_float() -> None:
    layout = _three_regions()
    torch.manual_seed(0)
    attn = CanvasAttention(layout, CanvasTopology.dense(["a", "b", "c"]), n_heads=2)
    x = torch.randn(1, layout.num_positions, 16)
    with torch.no_grad():
        want = attn(x, 2.0)
        assert torch.equal(attn(x, np.float32(2.0)), want)
        assert torch.equal(attn(x, torch.tensor(2.0)), want)
        assert torch.equal(attn(x, np.int64(2)), want)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, True, np.float64("inf")])
def test_set_betas_refuses_non_finite_betas_and_keeps_the_old_ones(bad: object) -> None:
    # the AttentionSharpening callback and every backbone's set_betas reach the blocks through this call
    wrapper = LoopedBlockWrapper(nn.Linear(4, 4), max_loops=3)
    wrapper.set_betas([1.0, 2.0, 3.0])
    with pytest.raises(CanvasValidationError, match=r"need 3 positive betas \(finite numbers > 0; NaN, inf, 0"):
        wrapper.set_betas([1.0, bad, 2.0])  # type: ignore[list-item]
    assert wrapper.betas == [1.0, 2.0, 3.0]


def test_set_betas_accepts_numpy_and_tensor_betas_as_floats() -> None:
    wrapper = LoopedBlockWrapper(nn.Linear(4, 4), max_loops=3)
    wrapper.set_betas([np.float32(0.5), np.int64(2), torch.tensor(4.0)])  # type: ignore[list-item]
    assert wrapper.betas == [0.5, 2.0, 4.0] and all(type(b) is float for b in wrapper.betas)
    wrapper.set_betas(np.array([1.0, 1.5, 2.0]))  # type: ignore[arg-type]
    assert wrapper.betas == [1.0, 1.5, 2.0]


# -- grid sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["T", "H", "W"])
def test_a_grid_axis_beyond_the_limit_is_refused_at_construction(axis: str) -> None:
    sizes = {"T": 1, "H": 1, "W": 1, axis: 10**30}
    with pytest.raises(
        LayoutValidationError,
        match=rf"^CanvasLayout\.{axis}={10**30} must be an integer >= 1 and <= MAX_POSITIONS=2\*\*24$",
    ):
        CanvasLayout(**sizes, d_model=8)


def test_a_grid_of_too_many_positions_is_refused_at_construction() -> None:
    assert MAX_POSITIONS == 2**24
    with pytest.raises(
        LayoutValidationError,
        match=r"^CanvasLayout T=1000000 H=10000 W=10000 has 100,000,000,000,000 positions; "
        r"a canvas holds at most MAX_POSITIONS=16,777,216 \(2\*\*24\)$",
    ):
        CanvasLayout(T=10**6, H=10**4, W=10**4, d_model=8)
    layout = CanvasLayout(T=2**12, H=2**12, W=1, d_model=8)  # exactly the limit: accepted
    assert layout.num_positions == MAX_POSITIONS


def test_d_model_beyond_the_limit_is_refused() -> None:
    rule = r"^CanvasLayout\.d_model=65537 must be an integer >= 1 and <= MAX_D_MODEL"
    with pytest.raises(LayoutValidationError, match=rule):
        CanvasLayout(T=1, H=1, W=1, d_model=MAX_D_MODEL + 1)


def test_a_schema_with_a_huge_grid_is_refused_before_any_allocation() -> None:
    data = CanvasSchema(_three_regions()).to_dict()
    data["layout"]["T"] = 10**30
    with pytest.raises(CanvasValidationError, match=rf"CanvasLayout\.T={10**30} must be an integer >= 1 and <= MAX"):
        CanvasSchema.from_dict(data)


def test_region_bounds_beyond_the_limit_are_refused_naming_the_axis() -> None:
    rule = rf"^bounds \(0,1,0,1,0,{10**30}\): w1={10**30} exceeds the canvas size limit MAX_POSITIONS=16777216"
    with pytest.raises(RegionValidationError, match=rule):
        RegionSpec((0, 1, 0, 1, 0, 10**30))


def test_a_position_encoding_too_large_to_allocate_is_refused_before_allocating() -> None:
    layout = CanvasLayout(T=2**12, H=2**12, W=1, d_model=256)  # 2**24 positions x 256 = 2**32 numbers
    rule = r"^SpatiotemporalCanvas: the position encoding of N=16,777,216 positions x d_model=256 .*2\*\*31"
    with pytest.raises(CanvasValidationError, match=rule):
        SpatiotemporalCanvas(layout)


# -- dense mask budget ---------------------------------------------------------------------------


def _big_plan():
    layout = CanvasLayout(T=16, H=64, W=64, d_model=8, regions={"v": (0, 16, 0, 64, 0, 64)})  # 65,536 positions
    return compile_topology(layout, CanvasTopology.causal_temporal(["v"]))


@pytest.mark.parametrize("view", ["dense_weights", "dense_allowed", "additive_mask", "log_weight_bias"])
def test_a_dense_canvas_mask_over_the_budget_is_refused_with_a_pointer_to_the_block_plan(view: str) -> None:
    assert DENSE_MASK_BUDGET == 2 * 1024**3
    plan = _big_plan()
    with pytest.raises(
        CanvasValidationError,
        match=rf"^AttentionPlan\.{view}: a dense \(65,536 x 65,536\) mask needs [\d,]+ bytes \(\d+ GiB\), over the "
        r"dense mask budget max_bytes=2,147,483,648 .*Use the block plan instead \(plan\.block_view",
    ):
        getattr(plan, view)()
    view_ = plan.block_view(128)  # what the message points to works at this size
    assert view_.num_blocks == 512


def test_the_dense_budget_is_an_argument() -> None:
    plan = compile_topology(_three_regions(), CanvasTopology.dense(["a", "b"]))
    n = plan.num_positions
    assert plan.dense_allowed(max_bytes=n * n).shape == (n, n)  # exactly the size: accepted
    rule = rf"needs {n * n * 4:,} bytes .* budget max_bytes={n * n * 4 - 1:,} "
    with pytest.raises(CanvasValidationError, match=rule):
        plan.dense_weights(max_bytes=n * n * 4 - 1)
    with pytest.raises(CanvasValidationError, match=r"over the dense mask budget"):
        compile_attention_mask(plan.layout, plan.topology, max_bytes=16)
    with pytest.raises(CanvasValidationError, match=r"AttentionPlan\.additive_mask: .*budget max_bytes=16 "):
        plan.topology.to_additive_mask(plan.layout, max_bytes=16)
    assert plan.topology.to_attention_mask(plan.layout).shape == (n, n)
    with pytest.raises(CanvasValidationError, match=r"max_bytes=0 must be a positive integer"):
        plan.dense_weights(max_bytes=0)


def test_the_dense_kernel_over_the_budget_is_refused_with_a_pointer_to_the_other_kernels() -> None:
    layout = CanvasLayout(T=8, H=64, W=64, d_model=8, regions={"v": (0, 8, 0, 64, 0, 64)})  # 32,768 positions
    mask = compile_topology(layout, CanvasTopology.causal_temporal(["v"])).group_mask([0, 1])
    with pytest.raises(
        CanvasValidationError,
        match=r"^AttentionMask\.dense_bias \(kernel 'dense'\): a dense \(32,768 x 32,768\) mask needs "
        r"4,294,967,296 bytes \(4 GiB\).*"
        r"a kernel that never builds it \('auto', 'partitioned', 'tiled', 'flex'\)",
    ):
        mask.dense_bias("cpu", torch.float32)
    with pytest.raises(CanvasValidationError, match=r"AttentionMask\.dense_weights: a dense"):
        mask.dense_allowed()


# -- NumPy scalars -------------------------------------------------------------------------------


def test_numpy_scalars_build_a_layout_stored_as_python_numbers() -> None:
    spec = RegionSpec(
        (np.int64(0), np.int32(2), np.int64(0), np.int64(1), np.uint8(0), np.int64(2)),
        period=np.int64(2),
        is_output=np.bool_(True),
        loss_weight=np.float32(0.5),
        semantic_embedding=[np.float32(0.25), np.float64(1.0)],
    )
    layout = CanvasLayout(
        T=np.int64(4), H=np.int32(2), W=np.uint16(2), d_model=np.int64(8), t_current=np.int64(1), regions={"a": spec}
    )
    assert (type(layout.T), type(layout.H), type(layout.W), type(layout.d_model), type(layout.t_current)) == (int,) * 5
    assert (type(spec.period), type(spec.is_output), type(spec.loss_weight)) == (int, bool, float)
    assert spec.loss_weight == 0.5 and spec.semantic_embedding == (0.25, 1.0)
    json.dumps(layout.to_dict())  # plain Python numbers: serialisable
    assert layout.num_positions == 16


def test_numpy_scalars_build_a_connection_stored_as_python_numbers() -> None:
    conn = Connection(
        "a", "b", weight=np.float32(0.5), t_src=np.int64(0), t_dst=np.int32(-1),
        temporal_fill="interpolate", interpolation_order=np.float64(2.0),
    )  # fmt: skip
    assert (type(conn.weight), type(conn.t_src), type(conn.t_dst)) == (float, int, int)
    assert conn.to_dict()["t_dst"] == -1
    json.dumps(conn.to_dict())


@pytest.mark.parametrize("value", [np.bool_(True), np.bool_(False)])
def test_numpy_bools_never_pass_as_numbers(value: object) -> None:
    assert not is_int(value) and not is_finite_number(value)
    with pytest.raises(CanvasValidationError, match=r"must be an integer"):
        check_int(value, "n")
    with pytest.raises(CanvasValidationError, match=r"must be a finite number"):
        check_finite_float(value, "x")
    with pytest.raises(LayoutValidationError, match=r"CanvasLayout\.T=.* must be an integer >= 1"):
        CanvasLayout(T=value, H=1, W=1, d_model=8)  # type: ignore[arg-type]
    assert check_bool(value, "flag") is bool(value)


def test_numpy_numbers_pass_the_shared_checks_as_python_numbers() -> None:
    assert is_int(np.int64(3)) and is_int(np.uint8(3)) and not is_int(np.float64(3.0))
    assert check_int(np.int64(3), "n", minimum=0, maximum=4) == 3 and type(check_int(np.int16(3), "n")) is int
    assert is_finite_number(np.float32(1.5)) and not is_finite_number(np.float32("nan"))
    assert not is_finite_number(np.float64("inf")) and not is_finite_number(10**400)
    assert check_finite_float(np.float32(1.5), "x", minimum=0) == 1.5
    with pytest.raises(CanvasValidationError, match=r"^n=np\.int64\(9\) must be an integer <= 4$"):
        check_int(np.int64(9), "n", maximum=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from a NumPy comparison
        assert check_int(np.uint8(255), "n", minimum=0) == 255
