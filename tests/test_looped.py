"""``LoopedBlockWrapper`` on a plain torch block and on a ``CanvasBlock``.

The wrapper iterates a block ``current_loops`` times, adding ``loop_embeddings[i]`` to the
hidden states before pass ``i`` and handing ``betas[i]`` to the block's ``beta=`` keyword.
Embeddings start at zero, so one loop reproduces the wrapped block exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from canvas_engineering.attention.canvas_attention import CanvasAttention
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.dit import CanvasBlock
from canvas_engineering.models.looped import LoopedBlockWrapper

D = 16
BATCH = 2
LAYOUT = CanvasLayout(T=2, H=2, W=3, d_model=D, regions={"a": (0, 2, 0, 2, 0, 2), "b": (0, 2, 0, 2, 2, 3)})
TOPOLOGY = CanvasTopology.dense(["a", "b"])


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny: intra-op threads only add contention (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter (zero-initialised ones included) a non-zero random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _encoder_layer() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(D, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    return block, (torch.randn(BATCH, 5, D),)


def _canvas_block() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    block = CanvasBlock(LAYOUT, TOPOLOGY, n_heads=2, mlp_ratio=2.0)
    _randomise(block)  # adaLN-Zero makes a fresh block the identity; make it do something
    return block, (torch.randn(BATCH, LAYOUT.num_positions, D), torch.randn(BATCH, D))


BLOCKS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "transformer_encoder_layer": _encoder_layer,
    "canvas_block": _canvas_block,
}


@pytest.fixture(params=list(BLOCKS), ids=list(BLOCKS))
def block_and_inputs(request: pytest.FixtureRequest) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return BLOCKS[request.param]()


def _count_calls(block: nn.Module) -> list[int]:
    calls: list[int] = []
    block.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def _set_embeddings(wrapper: LoopedBlockWrapper, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        wrapper.loop_embeddings.copy_(torch.randn(wrapper.loop_embeddings.shape, generator=gen))
    return wrapper.loop_embeddings.detach().clone()


def test_one_loop_reproduces_the_block_exactly(block_and_inputs: tuple[nn.Module, tuple[torch.Tensor, ...]]) -> None:
    block, inputs = block_and_inputs
    wrapper = LoopedBlockWrapper(block, max_loops=3, d_model=D)
    assert torch.equal(wrapper.loop_embeddings, torch.zeros(3, D))
    assert wrapper.current_loops == 1
    assert torch.equal(wrapper(*inputs), block(*inputs))


def test_zero_embeddings_iterate_the_block(block_and_inputs: tuple[nn.Module, tuple[torch.Tensor, ...]]) -> None:
    block, inputs = block_and_inputs
    wrapper = LoopedBlockWrapper(block, max_loops=3)  # width inferred from the block
    wrapper.set_loops(3)
    x, *rest = inputs
    expected = block(block(block(x, *rest), *rest), *rest)
    assert torch.equal(wrapper(*inputs), expected)


def test_active_loops_change_compute_and_output(block_and_inputs: tuple[nn.Module, tuple[torch.Tensor, ...]]) -> None:
    block, inputs = block_and_inputs
    wrapper = LoopedBlockWrapper(block, max_loops=3, d_model=D)
    emb = _set_embeddings(wrapper)
    calls = _count_calls(block)
    x, *rest = inputs

    one = wrapper(*inputs)
    assert len(calls) == 1
    torch.testing.assert_close(one, block(x + emb[0], *rest))

    calls.clear()
    wrapper.set_loops(3)
    three = wrapper(*inputs)
    assert len(calls) == 3
    h = x
    for i in range(3):
        h = block(h + emb[i], *rest)
    torch.testing.assert_close(three, h)
    assert (three - one).abs().max() > 1e-3

    calls.clear()
    wrapper.set_loops(2)
    two = wrapper(*inputs)
    assert len(calls) == 2
    assert (two - three).abs().max() > 1e-3


def test_gradient_reaches_the_active_loop_embeddings(
    block_and_inputs: tuple[nn.Module, tuple[torch.Tensor, ...]],
) -> None:
    block, inputs = block_and_inputs
    wrapper = LoopedBlockWrapper(block, max_loops=3, d_model=D)
    _set_embeddings(wrapper)
    wrapper.set_loops(2)
    wrapper(*inputs).square().sum().backward()
    grad = wrapper.loop_embeddings.grad
    assert grad is not None
    assert grad[0].abs().sum() > 0
    assert grad[1].abs().sum() > 0
    assert torch.equal(grad[2], torch.zeros(D))  # loop 2 did not run
    assert wrapper.loop_parameters() == [wrapper.loop_embeddings]


def test_activation_checkpointing_gives_the_same_gradients(
    block_and_inputs: tuple[nn.Module, tuple[torch.Tensor, ...]],
) -> None:
    block, inputs = block_and_inputs
    results = []
    for checkpoint in (False, True):
        wrapper = LoopedBlockWrapper(copy.deepcopy(block), max_loops=3, d_model=D, checkpoint=checkpoint).train()
        _set_embeddings(wrapper)
        wrapper.set_loops(3)
        calls = _count_calls(wrapper.block)
        x = inputs[0].clone().requires_grad_(True)
        out = wrapper(x, *inputs[1:])
        forward_calls = len(calls)
        out.square().sum().backward()
        grads = {name: p.grad for name, p in wrapper.named_parameters()}
        results.append((out.detach(), x.grad, grads, forward_calls, len(calls)))
    (out_a, xg_a, grads_a, fwd_a, total_a), (out_b, xg_b, grads_b, fwd_b, total_b) = results
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(xg_a, xg_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_a[name] is not None, name
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=lambda m, n=name: f"{n}: {m}")
    assert (fwd_a, total_a) == (3, 3)
    assert (fwd_b, total_b) == (3, 6)  # each loop's pass is recomputed in backward


def test_per_loop_beta_reaches_canvas_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    block, inputs = _canvas_block()
    wrapper = LoopedBlockWrapper(block, max_loops=3, d_model=D)
    wrapper.set_loops(3)
    baseline = wrapper(*inputs)

    seen: list[float] = []
    original = CanvasAttention.forward

    def spy(self: CanvasAttention, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        seen.append(beta)
        return original(self, x, beta)

    monkeypatch.setattr(CanvasAttention, "forward", spy)
    wrapper.set_betas([0.5, 1.0, 2.0])
    sharpened = wrapper(*inputs)
    assert seen == [0.5, 1.0, 2.0]
    assert (sharpened - baseline).abs().max() > 1e-4  # beta changes the attention, hence the output

    seen.clear()
    wrapper.set_loops(2)
    wrapper(*inputs)
    assert seen == [0.5, 1.0]


def test_betas_are_ignored_by_a_block_without_beta() -> None:
    block, inputs = _encoder_layer()
    wrapper = LoopedBlockWrapper(block, max_loops=2, d_model=D)
    wrapper.set_loops(2)
    before = wrapper(*inputs)
    wrapper.set_betas([0.5, 4.0])
    assert wrapper.betas == [0.5, 4.0]
    assert torch.equal(wrapper(*inputs), before)


@pytest.mark.parametrize(
    ("n", "match"),
    [(0, r"n=0 must be an integer in \[1, max_loops=3\]"), (4, r"n=4 must be"), (2.0, r"n=2\.0"), (True, r"n=True")],
)
def test_set_loops_rejects_bad_counts(n: object, match: str) -> None:
    wrapper = LoopedBlockWrapper(nn.Linear(D, D), max_loops=3)
    with pytest.raises(CanvasValidationError, match=match):
        wrapper.set_loops(n)  # type: ignore[arg-type]
    assert wrapper.current_loops == 1


@pytest.mark.parametrize("betas", [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, -2.0, 1.0]])
def test_set_betas_rejects_bad_values(betas: list[float]) -> None:
    wrapper = LoopedBlockWrapper(nn.Linear(D, D), max_loops=3)
    with pytest.raises(CanvasValidationError, match=r"need 3 positive betas"):
        wrapper.set_betas(betas)
    assert wrapper.betas == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("betas", [["x", 1.0, 1.0], [None, 1.0, 1.0], [1.0, float("inf"), 1.0], [float("nan")] * 3])
def test_set_betas_refuses_non_numbers_and_non_finite_values(betas: list[object]) -> None:
    # a non-number used to escape float() as a bare TypeError/ValueError; inf used to be accepted
    wrapper = LoopedBlockWrapper(nn.Linear(D, D), max_loops=3)
    with pytest.raises(CanvasValidationError, match=r"need 3 positive betas"):
        wrapper.set_betas(betas)  # type: ignore[arg-type]
    assert wrapper.betas == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("max_loops", [0, -1, 1.5, True])
def test_max_loops_must_be_a_positive_integer(max_loops: object) -> None:
    with pytest.raises(CanvasValidationError, match=r"max_loops=.* must be an integer >= 1"):
        LoopedBlockWrapper(nn.Linear(D, D), max_loops=max_loops)  # type: ignore[arg-type]
