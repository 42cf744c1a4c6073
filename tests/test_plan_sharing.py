"""One compiled plan per model, one cached device view per (mask, device, dtype), layering.

A backbone compiles its topology once and hands the :class:`AttentionPlan` to every block;
the plan builds each attention group's :class:`AttentionMask` once, and the mask builds each
device view (dense bias, tile biases, FlexAttention ``BlockMask`` and ``score_mod``) once per
device and dtype, in its one :class:`ViewCache`.
"""

from __future__ import annotations

import ast
import copy
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import canvas_engineering.attention.canvas_attention as canvas_attention_module
import canvas_engineering.compilation.compiler as compiler_module
import canvas_engineering.models.dit as dit_module
from canvas_engineering import (
    AttentionMask,
    CanvasAttention,
    CanvasBlock,
    CanvasDiT,
    CanvasLayout,
    CanvasTopology,
    CanvasValidationError,
    Connection,
    SpatiotemporalCanvas,
    UnknownAttentionTypeError,
    compile_topology,
)
from canvas_engineering.attention.kernels import softmax_attention
from canvas_engineering.compilation.attention_mask import ViewCache
from canvas_engineering.compilation.compiler import compile_additive_mask, compile_attention_mask
from canvas_engineering.plugin_host.host import get_registry
from canvas_engineering.plugin_host.registry import PluginRegistry

D = 32
LAYOUT = CanvasLayout(
    T=4, H=4, W=4, d_model=D, regions={"video": (0, 4, 0, 3, 0, 4), "act": (0, 4, 3, 4, 0, 2)}
)
TOPOLOGY = CanvasTopology(
    [
        *CanvasTopology.causal_temporal(["video", "act"]).connections,
        Connection("act", "video", weight=0.5, fn="pooling"),
    ]
)
N = LAYOUT.num_positions


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every compile_topology call made by the models (wherever they imported it)."""
    calls: list[int] = []
    original = compiler_module.compile_topology

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    for module in (compiler_module, dit_module, canvas_attention_module):
        monkeypatch.setattr(module, "compile_topology", counting)
    return calls


# -- one plan per model ------------------------------------------------------------------


@pytest.mark.parametrize("loop_blocks", ["all", "none", (1, 2)])
def test_dit_compiles_once_and_every_block_shares_the_plan(
    monkeypatch: pytest.MonkeyPatch, loop_blocks: object
) -> None:
    calls = count_compiles(monkeypatch)
    model = CanvasDiT(LAYOUT, TOPOLOGY, depth=3, n_heads=2, max_loops=2, loop_blocks=loop_blocks)
    assert len(calls) == 1, f"compile_topology ran {len(calls)} times for a depth-3 model"
    blocks = [getattr(b, "block", b) for b in model.blocks]
    assert all(b.attn.plan is model.plan for b in blocks)
    for groups in zip(*(b.attn.groups for b in blocks), strict=True):
        assert all(g.mask is groups[0].mask for g in groups), "blocks must share each group's mask"
    model.set_loops(2) if model.looped_blocks else None
    with torch.no_grad():
        model(torch.randn(2, N, D), torch.tensor([1, 500]))
    assert len(calls) == 1, "forward must not compile"


def test_attention_accepts_a_plan_and_matches_layout_topology() -> None:
    plan = compile_topology(LAYOUT, TOPOLOGY)
    torch.manual_seed(0)
    from_pair = CanvasAttention(LAYOUT, TOPOLOGY, d_model=D, n_heads=2)
    torch.manual_seed(0)
    from_plan = CanvasAttention(plan, d_model=D, n_heads=2)
    torch.manual_seed(0)
    with_topology = CanvasAttention(plan, TOPOLOGY, d_model=D, n_heads=2)
    assert from_plan.plan is plan and with_topology.plan is plan
    assert from_plan.layout is LAYOUT and from_plan.topology is TOPOLOGY
    x = torch.randn(2, N, D)
    with torch.no_grad():
        torch.testing.assert_close(from_plan(x), from_pair(x), atol=0, rtol=0)
        torch.testing.assert_close(with_topology(x), from_pair(x), atol=0, rtol=0)
    block = CanvasBlock(plan, n_heads=2)
    assert block.attn.plan is plan


def test_a_plan_with_another_topology_or_no_topology_is_refused() -> None:
    plan = compile_topology(LAYOUT, TOPOLOGY)
    with pytest.raises(CanvasValidationError, match="different topology"):
        CanvasAttention(plan, CanvasTopology.dense(["video"]), d_model=D, n_heads=2)
    with pytest.raises(CanvasValidationError, match=r"AttentionPlan or a \(CanvasLayout, CanvasTopology\) pair"):
        CanvasAttention(LAYOUT, d_model=D, n_heads=2)
    with pytest.raises(CanvasValidationError, match="CanvasBlock"):
        CanvasBlock(LAYOUT)


def test_set_kernel_changes_one_module_and_keeps_the_shared_cache() -> None:
    plan = compile_topology(LAYOUT, TOPOLOGY)
    a, b = CanvasAttention(plan, d_model=D, n_heads=2), CanvasAttention(plan, d_model=D, n_heads=2)
    a.set_kernel("tiled")
    assert {g.mask.kernel for g in a.groups} == {"tiled"} and {g.mask.kernel for g in b.groups} == {"auto"}
    for ga, gb in zip(a.groups, b.groups, strict=True):
        assert ga.mask is not gb.mask and ga.mask.cache is gb.mask.cache
    a.set_kernel("auto")
    assert all(ga.mask is gb.mask for ga, gb in zip(a.groups, b.groups, strict=True))


def test_group_mask_is_built_once_per_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = compile_topology(LAYOUT, TOPOLOGY)
    built: list[int] = []
    original = compiler_module._weight_table
    monkeypatch.setattr(compiler_module, "_weight_table", lambda *a: built.append(1) or original(*a))
    first = plan.group_mask([1, 0])
    assert plan.group_mask((0, 1)) is first and len(built) == 1
    dense = plan.group_mask([0, 1], "dense")
    assert dense.kernel == "dense" and dense.cache is first.cache and len(built) == 1
    with pytest.raises(CanvasValidationError, match=r"must be indices in \[0, 7\)"):
        plan.group_mask([7])
    with pytest.raises(CanvasValidationError, match="auto, flex, partitioned, tiled, dense"):
        plan.group_mask([0], "sdpa")


# -- the registry argument -------------------------------------------------------------------


def test_attention_types_come_from_the_given_registry() -> None:
    registry = PluginRegistry()
    registry.attention_types.add("cross_attention", get_registry().attention_types["cross_attention"].obj)
    topology = CanvasTopology.causal_temporal(["video", "act"])
    attn = CanvasAttention(LAYOUT, topology, d_model=D, n_heads=2, registry=registry)
    assert [g.fn for g in attn.groups] == ["cross_attention"]
    only = r"'pooling' is not installed; installed types: cross_attention$"
    with pytest.raises(UnknownAttentionTypeError, match=only):
        CanvasAttention(LAYOUT, TOPOLOGY, d_model=D, n_heads=2, registry=registry)
    with pytest.raises(UnknownAttentionTypeError, match="installed types: cross_attention"):
        CanvasDiT(LAYOUT, TOPOLOGY, depth=1, n_heads=2, registry=registry)
    model = CanvasDiT(LAYOUT, topology, depth=2, n_heads=2, registry=registry)
    assert len(model.blocks) == 2


# -- one view per (mask, device, dtype) ----------------------------------------------------------


def group_mask() -> AttentionMask:
    return compile_topology(LAYOUT, TOPOLOGY).group_mask(range(6))


def test_dense_bias_is_built_once_per_device_and_dtype() -> None:
    mask = group_mask()
    bias, valid = mask.dense_bias("cpu", torch.float32)
    assert mask.dense_bias(torch.device("cpu"), torch.float32)[0] is bias
    wide, _ = mask.dense_bias("cpu", torch.float64)
    assert wide is not bias and wide.dtype == torch.float64 and bias.dtype == torch.float32
    assert len([k for k in mask.cache if k[0] == "dense_bias"]) == 2
    assert bias.shape == (mask.num_queries, mask.num_keys) and valid.dtype == torch.bool
    expected = mask.additive_bias()
    expected[~valid] = 0.0
    torch.testing.assert_close(bias, expected)


def test_block_mask_and_score_mod_are_built_once() -> None:
    mask = group_mask()
    bm = mask.block_mask("cpu")
    assert mask.block_mask(torch.device("cpu")) is bm
    assert mask.score_mod("cpu", torch.float32) is mask.score_mod("cpu", torch.float32)
    assert mask.score_mod("cpu", torch.float32) is not mask.score_mod("cpu", torch.float64)
    assert bm.shape[-2:] == (mask.num_queries, mask.num_keys)
    plan = compile_topology(LAYOUT, TOPOLOGY)
    assert plan.block_mask(16) is plan.block_mask(16, "cpu")
    assert plan.block_mask(32) is not plan.block_mask(16)


def test_clear_cache_drops_every_view_and_copies_start_empty() -> None:
    mask = group_mask()
    bias, _ = mask.dense_bias("cpu", torch.float32)
    mask.tiles(mask.choose_block_size())
    view = mask.with_kernel("dense")
    assert view.cache is mask.cache and len(mask.cache) >= 3
    assert isinstance(mask.cache, ViewCache)
    for clone in (copy.deepcopy(mask), pickle.loads(pickle.dumps(mask))):
        assert len(clone.cache) == 0 and clone.cache is not mask.cache
        torch.testing.assert_close(clone.dense_bias("cpu", torch.float32)[0], bias)
    mask.block_mask("cpu")  # a closure: pickling must still work once it is cached
    pickle.dumps(mask)
    mask.clear_cache()
    assert len(view.cache) == 0
    assert mask.dense_bias("cpu", torch.float32)[0] is not bias


@pytest.mark.parametrize("kernel", ["dense", "tiled", "flex"])
def test_kernels_build_their_views_once(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mask = group_mask().with_kernel(kernel)
    q, k, v = (torch.randn(2, 2, n, 8) for n in (mask.num_queries, mask.num_keys, mask.num_keys))
    with torch.no_grad():
        first = softmax_attention(q, k, v, mask)
    keys = set(mask.cache)
    built: list[object] = []
    original = ViewCache.get

    def recording(self: ViewCache, key: object, build: Callable[[], object]) -> object:
        return original(self, key, lambda: built.append(key) or build())

    monkeypatch.setattr(ViewCache, "get", recording)
    with torch.no_grad():
        again = softmax_attention(q, k, v, mask)
    assert not built, f"{kernel}: rebuilt {built}"
    assert set(mask.cache) == keys
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    with torch.no_grad():
        softmax_attention(q.double(), k.double(), v.double(), mask)
    assert built, f"{kernel}: a new dtype needs its own views"


def test_one_class_blocks_keep_one_bias_row() -> None:
    """Frame-aligned blocks of a single class store one bias row; results equal the dense kernel."""
    layout = CanvasLayout(T=6, H=8, W=8, d_model=D, regions={"v": (0, 6, 0, 8, 0, 8)})
    mask = compile_topology(layout, CanvasTopology.causal_temporal(["v"])).group_mask([0, 1])
    plan = mask.tiles(64)
    masked = [b for b in plan.buckets if b.bias is not None]
    assert not masked, "frame-aligned causal_temporal tiles are clean"
    weighted = compile_topology(layout, CanvasTopology([Connection("v", "v", t_src=0, t_dst=-1, weight=0.5)]))
    wmask = weighted.group_mask([0])
    buckets = [b for b in wmask.tiles(64).buckets if b.bias is not None]
    assert buckets and all(b.bias.shape[1] == 1 and b.row_valid.shape[1] == 1 for b in buckets)
    q, k, v = (torch.randn(1, 2, layout.num_positions, 8, requires_grad=True) for _ in range(3))
    tiled = softmax_attention(q, k, v, wmask, beta=1.5, kernel="tiled")
    dense = softmax_attention(q, k, v, wmask, beta=1.5, kernel="dense")
    torch.testing.assert_close(tiled, dense, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(tiled.square().sum(), (q, k, v))
    ref = torch.autograd.grad(dense.square().sum(), (q, k, v))
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


# -- layering and public helpers -------------------------------------------------------------


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported by ``path`` outside ``if TYPE_CHECKING:`` blocks (functions included)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for node in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_topology_never_imports_the_compiler() -> None:
    import canvas_engineering.declare.topology as topology_module

    imports = _runtime_imports(Path(topology_module.__file__))
    assert "canvas_engineering.compilation.compiler" not in imports
    higher = {"compiler", "attention_mask", "canvas_attention", "kernels"}
    assert not any(m.startswith("canvas_engineering.") and m.split(".")[1] in higher for m in imports)


def test_topology_mask_methods_equal_the_compiler_functions() -> None:
    torch.testing.assert_close(TOPOLOGY.to_attention_mask(LAYOUT), compile_attention_mask(LAYOUT, TOPOLOGY))
    torch.testing.assert_close(TOPOLOGY.to_additive_mask(LAYOUT), compile_additive_mask(LAYOUT, TOPOLOGY))
    plan = compile_topology(LAYOUT, TOPOLOGY)
    torch.testing.assert_close(compile_attention_mask(LAYOUT, TOPOLOGY), plan.dense_weights())


def test_canvas_check_is_public() -> None:
    canvas = SpatiotemporalCanvas(LAYOUT)
    canvas.check_canvas(torch.zeros(2, N, D))
    expected = rf"canvas must have shape \(B, {N}, {D}\), got \(2, {N}, 3\)"
    with pytest.raises(CanvasValidationError, match=expected):
        canvas.check_canvas(torch.zeros(2, N, 3))
    model = CanvasDiT(LAYOUT, TOPOLOGY, depth=1, n_heads=2)
    with pytest.raises(CanvasValidationError, match="canvas must have shape"):
        model(torch.zeros(1, N - 1, D), 3)
