"""``CanvasDiT`` (the from-scratch looped canvas DiT), its plugin, ``ActionHead`` and loop checkpoints.

Everything runs on the seed's robot-manipulation canvas (5x8x8 = 320 positions; visual,
action, reward) with ``d_model`` shrunk to 32 so a forward takes milliseconds on CPU.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import canvas_engineering as ce
from canvas_engineering import (
    ActionHead,
    CanvasBackbone,
    CanvasBlock,
    CanvasDiT,
    CanvasLayout,
    CanvasTopology,
    CanvasValidationError,
    LoopCheckpointError,
    LoopedBlockWrapper,
    get_registry,
    load_loop_checkpoint,
    save_loop_checkpoint,
)
from canvas_engineering.models.loop_checkpoint import FORMAT, FORMAT_VERSION
from canvas_engineering.typed.presets import robot_manipulation_schema

D = 32
N = 320


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny: intra-op threads only add contention (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def canvas() -> tuple[CanvasLayout, CanvasTopology]:
    schema = robot_manipulation_schema()
    return dataclasses.replace(schema.layout, d_model=D), schema.topology


def _dit(canvas: tuple[CanvasLayout, CanvasTopology], **config: object) -> CanvasDiT:
    layout, topology = canvas
    config = {"depth": 2, "n_heads": 2, "mlp_ratio": 2.0, **config}
    return CanvasDiT(layout, topology, **config)  # type: ignore[arg-type]


def _randomise(module: nn.Module, seed: int = 0, skip_loops: bool = False) -> None:
    """Give every parameter (the zero-initialised ones too) a fixed, seed-determined value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if skip_loops and name.endswith("loop_embeddings"):
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N, D, generator=gen), torch.tensor([3, 700])[:batch]


def _block_calls(model: CanvasDiT) -> list[int]:
    calls: list[int] = []
    for m in model.modules():
        if isinstance(m, CanvasBlock):
            m.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    return calls


# ---------------------------------------------------------------------------------------
# CanvasDiT
# ---------------------------------------------------------------------------------------


def test_forward_shape_and_zero_initialised_output(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas, max_loops=3)
    tokens, t = _inputs()
    out = model(tokens, t)
    assert out.shape == (2, N, D)
    assert torch.equal(out, torch.zeros(2, N, D))  # adaLN-Zero + zero output Linear
    assert isinstance(model, CanvasBackbone)
    assert model.max_loops == 3
    assert model.current_loops == 1
    # a scalar timestep is broadcast over the batch
    _randomise(model)
    torch.testing.assert_close(model(tokens, 3), model(tokens, torch.tensor([3, 3])))


def test_bad_inputs_are_refused(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas)
    tokens, _ = _inputs()
    with pytest.raises(CanvasValidationError, match=r"timestep must have shape \(2,\) or be a scalar, got \(3,\)"):
        model(tokens, torch.tensor([1, 2, 3]))
    with pytest.raises(CanvasValidationError, match=r"canvas must have shape \(B, 320, 32\), got \(2, 320, 16\)"):
        model(torch.zeros(2, N, 16), torch.tensor([1, 2]))


def test_timestep_changes_the_output(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas)
    _randomise(model)
    tokens, _ = _inputs(batch=1)
    early, late = model(tokens, torch.tensor([5])), model(tokens, torch.tensor([900]))
    assert (early - late).abs().max() > 1e-3
    torch.testing.assert_close(model(tokens, torch.tensor([5])), early)  # deterministic


def test_position_encodings_tell_positions_apart(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas)
    _randomise(model)
    out = model(torch.zeros(1, N, D), torch.tensor([10]))  # identical content everywhere
    visual = canvas[0].region_indices("visual")
    assert (out[0, visual[0]] - out[0, visual[-1]]).abs().max() > 1e-3


def test_gradients_reach_every_parameter(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas, max_loops=2)
    _randomise(model)
    model.set_loops(2)
    tokens, t = _inputs()
    model(tokens, t).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_set_loops_changes_compute_and_output(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas, max_loops=3)
    _randomise(model)
    calls = _block_calls(model)
    tokens, t = _inputs()
    outputs = {}
    for n in (1, 3, 2):
        calls.clear()
        model.set_loops(n)
        assert [b.current_loops for b in model.looped_blocks] == [n, n]
        assert model.current_loops == n
        outputs[n] = model(tokens, t)
        assert len(calls) == 2 * n  # depth 2, n passes each
    assert (outputs[1] - outputs[3]).abs().max() > 1e-3
    assert (outputs[2] - outputs[3]).abs().max() > 1e-3


def test_set_betas_reaches_every_looped_block(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas, max_loops=3)
    _randomise(model)
    model.set_loops(3)
    tokens, t = _inputs()
    before = model(tokens, t)
    model.set_betas([1.0, 2.0, 4.0])
    assert [b.betas for b in model.looped_blocks] == [[1.0, 2.0, 4.0]] * 2
    assert (model(tokens, t) - before).abs().max() > 1e-4


def test_backbone_loop_control_validates(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas, max_loops=3)
    for n in (0, 4, 1.0, True):
        with pytest.raises(CanvasValidationError, match=rf"CanvasDiT\.set_loops: n={n!r} .*max_loops=3"):
            model.set_loops(n)  # type: ignore[arg-type]
    for betas in ([1.0, 2.0], [1.0, 0.0, 2.0], ["x", 1.0, 1.0]):
        with pytest.raises(CanvasValidationError, match=r"CanvasDiT\.set_betas: .* must be 3 positive number"):
            model.set_betas(betas)  # type: ignore[arg-type]
    assert [b.current_loops for b in model.looped_blocks] == [1, 1]
    assert [b.betas for b in model.looped_blocks] == [[1.0, 1.0, 1.0]] * 2


def test_backbone_refuses_non_finite_betas(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    # an infinite beta turns the attention logits into inf and the output into NaN
    model = _dit(canvas, max_loops=2)
    for betas in ([1.0, float("inf")], [float("nan"), 1.0]):
        with pytest.raises(CanvasValidationError, match=r"CanvasDiT\.set_betas: .* must be 2 positive number"):
            model.set_betas(betas)
    assert [b.betas for b in model.looped_blocks] == [[1.0, 1.0]] * 2


def test_loop_blocks_range_wraps_only_those_blocks(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    model = _dit(canvas, depth=4, max_loops=2, loop_blocks=(1, 3))
    kinds = [type(b) for b in model.blocks]
    assert kinds == [CanvasBlock, LoopedBlockWrapper, LoopedBlockWrapper, CanvasBlock]
    assert model.looped_blocks == [model.blocks[1], model.blocks[2]]
    calls = _block_calls(model)
    model.set_loops(2)
    model(*_inputs())
    assert len(calls) == 1 + 2 + 2 + 1

    everything = _dit(canvas, depth=3, max_loops=1)  # one loop: still wrapped, so callbacks work alike
    assert len(everything.looped_blocks) == 3
    nothing = _dit(canvas, depth=3, max_loops=3, loop_blocks="none")
    assert nothing.looped_blocks == []
    assert nothing.max_loops == 1
    assert all(isinstance(b, CanvasBlock) for b in nothing.blocks)
    nothing.set_loops(1)
    nothing.set_betas([2.0])
    with pytest.raises(CanvasValidationError, match=r"max_loops=1"):
        nothing.set_loops(2)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"loop_blocks": (2, 1)}, r"loop_blocks=\(2, 1\) must be 'all', 'none' or a \(start, stop\) pair"),
        ({"loop_blocks": (0, 3)}, r"loop_blocks=\(0, 3\) .*depth=2"),
        ({"loop_blocks": "some"}, r"loop_blocks='some'"),
        ({"depth": 0}, r"depth=0 must be an integer >= 1"),
        ({"max_loops": 0}, r"max_loops=0 must be an integer >= 1"),
        ({"n_heads": 3}, r"n_heads \(3\) must divide layout\.d_model \(32\)"),
        ({"kernel": "fast"}, r"kernel='fast' must be one of auto, flex, partitioned, tiled, dense"),
        ({"mlp_ratio": 0}, r"mlp_ratio=0 must be a positive number"),
    ],
)
def test_constructor_names_the_bad_argument(
    canvas: tuple[CanvasLayout, CanvasTopology], config: dict[str, object], match: str
) -> None:
    with pytest.raises(CanvasValidationError, match=match):
        _dit(canvas, **config)


@pytest.mark.parametrize("mlp_ratio", [float("inf"), float("nan"), True, -1.0])
def test_mlp_ratio_must_be_a_finite_positive_number(
    canvas: tuple[CanvasLayout, CanvasTopology], mlp_ratio: object
) -> None:
    # inf and NaN used to pass the check and fail later inside round() with a bare error
    with pytest.raises(CanvasValidationError, match=r"CanvasBlock: mlp_ratio=.* must be a positive number"):
        _dit(canvas, mlp_ratio=mlp_ratio)


@pytest.mark.parametrize("name", ["depth", "n_heads", "max_loops"])
def test_sizes_refuse_bools(canvas: tuple[CanvasLayout, CanvasTopology], name: str) -> None:
    with pytest.raises(CanvasValidationError, match=rf"CanvasDiT: {name}=True must be an integer >= 1"):
        _dit(canvas, **{name: True})


def test_registered_plugin_builds_a_canvas_dit(canvas: tuple[CanvasLayout, CanvasTopology]) -> None:
    layout, topology = canvas
    entry = get_registry().backbones["canvas_dit"]
    assert entry.distribution == "canvas-engineering"
    assert entry.source == "canvas_engineering.plugins.backbones"
    model = entry.obj(layout, topology, depth=2)
    assert isinstance(model, CanvasDiT)
    assert len(model.blocks) == 2
    assert model(*_inputs()).shape == (2, N, D)
    with pytest.raises(CanvasValidationError, match=r"unknown option\(s\) dpeth; accepted: depth, n_heads"):
        entry.obj(layout, topology, dpeth=2)


# ---------------------------------------------------------------------------------------
# ActionHead
# ---------------------------------------------------------------------------------------


def test_action_head_shapes_and_pooling() -> None:
    torch.manual_seed(0)
    head = ActionHead(latent_dim=D, action_dim=7, hidden_dim=16)
    tokens = torch.randn(4, 5, D)
    assert head(tokens).shape == (4, 7)
    torch.testing.assert_close(head(tokens), head(tokens.mean(dim=1)))  # mean-pooled over tokens
    assert head(torch.randn(4, D)).shape == (4, 7)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert (head.mlp[0].in_features, head.mlp[0].out_features, head.mlp[2].out_features) == (D, 16, 7)

    per_token = ActionHead(latent_dim=D, action_dim=3, hidden_dim=16, n_layers=3, pool="none")
    out = per_token(tokens)
    assert out.shape == (4, 5, 3)
    torch.testing.assert_close(out[:, 2], per_token(tokens[:, 2]))
    assert sum(isinstance(m, nn.Linear) for m in per_token.mlp) == 3

    linear = ActionHead(latent_dim=D, action_dim=2, n_layers=1)
    assert [type(m) for m in linear.mlp] == [nn.Linear]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latent_dim": 0}, r"latent_dim=0 must be an integer >= 1"),
        ({"latent_dim": 8, "action_dim": -1}, r"action_dim=-1"),
        ({"latent_dim": 8, "hidden_dim": 2.5}, r"hidden_dim=2\.5"),
        ({"latent_dim": 8, "n_layers": 0}, r"n_layers=0"),
        ({"latent_dim": 8, "pool": "max"}, r"pool='max' must be one of 'mean', 'none'"),
    ],
)
def test_action_head_names_the_bad_argument(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(CanvasValidationError, match=match):
        ActionHead(**kwargs)  # type: ignore[arg-type]


def test_action_head_refuses_wrong_latent_width() -> None:
    head = ActionHead(latent_dim=8)
    with pytest.raises(CanvasValidationError, match=r"\(B, n_tokens, 8\) or \(B, 8\), got \(2, 5, 9\)"):
        head(torch.zeros(2, 5, 9))


# ---------------------------------------------------------------------------------------
# loop checkpoints
# ---------------------------------------------------------------------------------------


def _frozen_looped(canvas: tuple[CanvasLayout, CanvasTopology], max_loops: int = 3, **config: object) -> CanvasDiT:
    """A looped DiT whose backbone weights are fixed by a seed and frozen ("full" freeze)."""
    model = _dit(canvas, max_loops=max_loops, **config)
    _randomise(model, seed=0, skip_loops=True)
    model.requires_grad_(False)
    for p in model.loop_parameters():
        p.requires_grad_(True)
    model.freeze_strategy = "full"
    model.set_loops(max_loops)
    return model


def _perturb_loops(model: CanvasDiT, seed: int) -> None:
    """Add noise to the loop embeddings (a uniform shift would vanish in the LayerNorms)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.loop_parameters():
            p.add_(torch.randn(p.shape, generator=gen))


def _loop_state(model: CanvasDiT) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("loop_embeddings")}


def test_loop_checkpoint_round_trip(canvas: tuple[CanvasLayout, CanvasTopology], tmp_path: Path) -> None:
    model = _frozen_looped(canvas)
    _perturb_loops(model, seed=5)  # "trained" loop embeddings
    tokens, t = _inputs()
    expected = model(tokens, t)
    path = save_loop_checkpoint(model, tmp_path / "loops.pt", extra_config={"step": 7, "betas": [1.0, 2.0]})
    assert path == tmp_path / "loops.pt"

    _perturb_loops(model, seed=6)
    assert (model(tokens, t) - expected).abs().max() > 1e-3

    config = load_loop_checkpoint(model, path)
    assert torch.equal(model(tokens, t), expected)
    assert all(p.requires_grad and p.is_leaf and p.grad is None for p in model.loop_parameters())
    assert config["extra"] == {"step": 7, "betas": [1.0, 2.0]}
    assert config["freeze_strategy"] == "full"
    assert config["library_version"] == ce.__version__
    assert config["max_loops"] == {"blocks.0": 3, "blocks.1": 3}
    assert config["loop_parameters"] == ["blocks.0.loop_embeddings", "blocks.1.loop_embeddings"]
    assert config["parameters"] == {"blocks.0.loop_embeddings": [3, D], "blocks.1.loop_embeddings": [3, D]}
    assert (config["missing_keys"], config["unexpected_keys"]) == ([], [])

    # a fresh model with the same (seed-determined) frozen weights gets the same outputs
    fresh = _frozen_looped(canvas)
    assert (fresh(tokens, t) - expected).abs().max() > 1e-3  # fresh loop embeddings are zero
    load_loop_checkpoint(fresh, path)
    assert torch.equal(fresh(tokens, t), expected)


def test_loop_checkpoint_holds_only_loop_and_trainable_parameters(
    canvas: tuple[CanvasLayout, CanvasTopology], tmp_path: Path
) -> None:
    model = _frozen_looped(canvas)
    save_loop_checkpoint(model, tmp_path / "loops.pt")
    payload = torch.load(tmp_path / "loops.pt", weights_only=True)
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert list(payload["state_dict"]) == ["blocks.0.loop_embeddings", "blocks.1.loop_embeddings"]
    total = sum(p.numel() for p in model.parameters())
    assert payload["config"]["num_model_parameters"] == total
    assert payload["config"]["num_saved_parameters"] == 2 * 3 * D
    loops_size = (tmp_path / "loops.pt").stat().st_size
    torch.save(model.state_dict(), tmp_path / "full.pt")
    assert loops_size < (tmp_path / "full.pt").stat().st_size / 10

    model.out.requires_grad_(True)  # e.g. a "half" freeze leaves more trainable
    save_loop_checkpoint(model, tmp_path / "more.pt")
    state = torch.load(tmp_path / "more.pt", weights_only=True)["state_dict"]
    assert list(state) == ["blocks.0.loop_embeddings", "blocks.1.loop_embeddings", "out.weight", "out.bias"]
    assert torch.equal(state["out.weight"], model.out.weight)


def test_mismatched_model_names_the_parameter_and_both_shapes(
    canvas: tuple[CanvasLayout, CanvasTopology], tmp_path: Path
) -> None:
    save_loop_checkpoint(_frozen_looped(canvas, max_loops=3), tmp_path / "loops.pt")
    other = _frozen_looped(canvas, max_loops=2)
    before = _loop_state(other)
    message = (
        "parameter 'blocks.0.loop_embeddings' has shape (3, 32) in the checkpoint but (2, 32) in the model"
    )
    with pytest.raises(LoopCheckpointError, match=re.escape(message)) as info:
        load_loop_checkpoint(other, tmp_path / "loops.pt")
    assert info.value.parameter == "blocks.0.loop_embeddings"
    with pytest.raises(LoopCheckpointError, match=re.escape(message)):
        load_loop_checkpoint(other, tmp_path / "loops.pt", strict=False)  # shapes must match even then
    assert all(torch.equal(v, _loop_state(other)[k]) for k, v in before.items())  # nothing was changed


def test_missing_and_unexpected_names(canvas: tuple[CanvasLayout, CanvasTopology], tmp_path: Path) -> None:
    partial = _frozen_looped(canvas, loop_blocks=(1, 2))
    _perturb_loops(partial, seed=3)
    save_loop_checkpoint(partial, tmp_path / "partial.pt")
    full = _frozen_looped(canvas)
    missing = r"loop parameter 'blocks\.0\.loop_embeddings' of the model is missing from the checkpoint"
    with pytest.raises(LoopCheckpointError, match=missing):
        load_loop_checkpoint(full, tmp_path / "partial.pt")
    config = load_loop_checkpoint(full, tmp_path / "partial.pt", strict=False)
    assert config["missing_keys"] == ["blocks.0.loop_embeddings"]
    assert torch.equal(full.blocks[1].loop_embeddings, partial.blocks[1].loop_embeddings)

    save_loop_checkpoint(full, tmp_path / "full.pt")
    unexpected = r"parameter 'blocks\.0\.loop_embeddings' is in the checkpoint but not in the model"
    with pytest.raises(LoopCheckpointError, match=unexpected):
        load_loop_checkpoint(partial, tmp_path / "full.pt")
    config = load_loop_checkpoint(partial, tmp_path / "full.pt", strict=False)
    assert config["unexpected_keys"] == ["blocks.0.loop_embeddings"]


_EXECUTED: list[str] = []


def _side_effect() -> str:
    _EXECUTED.append("ran")
    return "pwned"


class _Payload:
    """Unpickling this runs ``_side_effect``: exactly what weights-only loading must refuse."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_side_effect, ())


def test_loading_is_weights_only(canvas: tuple[CanvasLayout, CanvasTopology], tmp_path: Path) -> None:
    model = _frozen_looped(canvas)
    evil = {"format": FORMAT, "format_version": 1, "config": {}, "state_dict": {}, "x": _Payload()}
    torch.save(evil, tmp_path / "evil.pt")
    with pytest.raises(LoopCheckpointError, match=r"refused to load, it holds more than tensors") as info:
        load_loop_checkpoint(model, tmp_path / "evil.pt")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert _EXECUTED == []

    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(LoopCheckpointError, match=r"not a canvas-engineering loop checkpoint"):
        load_loop_checkpoint(model, tmp_path / "other.pt")


def test_extra_config_must_load_back_weights_only(
    canvas: tuple[CanvasLayout, CanvasTopology], tmp_path: Path
) -> None:
    with pytest.raises(LoopCheckpointError, match=r"extra_config\['opt'\]\[1\] is a _Payload"):
        save_loop_checkpoint(_frozen_looped(canvas), tmp_path / "loops.pt", extra_config={"opt": [1, _Payload()]})
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(
    canvas: tuple[CanvasLayout, CanvasTopology], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _frozen_looped(canvas)
    path = tmp_path / "loops.pt"
    save_loop_checkpoint(model, path)
    previous = path.read_bytes()
    _perturb_loops(model, seed=1)

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        save_loop_checkpoint(model, path)
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["loops.pt"]  # no temporary file left behind
    monkeypatch.undo()
    fresh = _frozen_looped(canvas)
    load_loop_checkpoint(fresh, path)
    assert torch.equal(fresh.blocks[0].loop_embeddings, torch.zeros(3, D))
