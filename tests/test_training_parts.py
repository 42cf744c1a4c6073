"""The training layer's parts: per-concept objects chosen once, the default program, the injected registry."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from canvas_fixtures import FORMATS, NO_VAL_DATA, tiny_batch, tiny_loader, tiny_schema

from canvas_engineering import CanvasModule, CanvasProgram, Clock, ProgramValidationError, RegionProgram
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.training import (
    DeterministicCarrier,
    DiffusiveCarrier,
    EveryFrameClock,
    FilterCarrier,
    FreezeMode,
    MemoryCarrier,
    ProgramClock,
    ResidualCarrier,
    RuntimeMode,
    carrier_for,
    compile_mode_for,
    region_behaviours,
    write_mode_for,
)
from canvas_engineering.training.write_modes import backbone_write_modes

pytestmark = NO_VAL_DATA

SMALL = {"depth": 1, "n_heads": 2}


def make(**kwargs) -> CanvasModule:
    torch.manual_seed(0)
    kwargs.setdefault("backbone_config", SMALL)
    kwargs.setdefault("region_formats", FORMATS)
    if "program" not in kwargs:
        kwargs.setdefault("schema", tiny_schema())
    return CanvasModule(**kwargs)


@pytest.mark.parametrize(
    ("name", "cls", "noised", "inputs", "previous", "memory"),
    [
        ("diffusive", DiffusiveCarrier, True, False, False, False),
        ("filter", FilterCarrier, True, True, False, False),
        ("deterministic", DeterministicCarrier, False, False, False, False),
        ("memory", MemoryCarrier, False, False, False, True),
        ("residual", ResidualCarrier, True, False, True, False),
    ],
)
def test_each_carrier_is_an_object_answering_for_itself(name, cls, noised, inputs, previous, memory) -> None:
    carrier = carrier_for(name)
    assert type(carrier) is cls and carrier.name == name
    assert (carrier.is_noised, carrier.predicts_inputs, carrier.adds_previous, carrier.carries_memory) == (
        noised, inputs, previous, memory)
    decoded, before = torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert torch.equal(carrier.compose(decoded, None), decoded)
    assert torch.equal(carrier.compose(decoded, before), decoded + before if previous else decoded)


def test_compile_and_write_modes_are_objects_and_unknown_names_are_refused() -> None:
    assert isinstance(compile_mode_for("runtime"), RuntimeMode)
    frozen = compile_mode_for("freeze")
    assert isinstance(frozen, FreezeMode) and not frozen.trains_codec and frozen.detaches_tokens
    constant, export = compile_mode_for("constant"), compile_mode_for("export")
    assert not constant.has_codec and export.is_exported and export.has_codec
    assert not write_mode_for("add").needs_backbone_support and write_mode_for("gate").needs_backbone_support
    assert backbone_write_modes(["add", "add"]) is None
    assert backbone_write_modes(["add", "replace"]) == ["add", "replace"]
    for lookup, what in ((carrier_for, "carrier"), (compile_mode_for, "compile mode"), (write_mode_for, "write mode")):
        with pytest.raises(ProgramValidationError, match=rf"unknown {what} 'nope'; choose one of"):
            lookup("nope")


def test_clocks_are_chosen_once_per_region() -> None:
    program = CanvasProgram(tiny_schema(), {"action": RegionProgram(clock=Clock("periodic", period=2))})
    regions = region_behaviours(program)
    assert isinstance(regions["video"].clock, EveryFrameClock) and not regions["video"].clock.holds
    assert isinstance(regions["action"].clock, ProgramClock) and regions["action"].clock.holds
    batch = tiny_batch(2)
    every = regions["video"].clock.update_mask(batch, 2, torch.device("cpu"))
    assert every.shape == (2, 6) and bool(every.all())
    assert regions["action"].clock.update_mask(batch, 2, torch.device("cpu"))[0].tolist() == [True, False] * 3
    assert Clock("periodic", period=2, phase=1).describe() == "every 2 (phase 1)"
    assert Clock().describe() == "every frame"
    assert Clock("on_event", source="action").watched_region("reward") == "action"
    assert Clock("on_event").watched_region("reward") == "reward" and Clock().watched_region("reward") is None


def test_no_program_is_the_default_program_with_the_same_masks_loss_and_sample() -> None:
    plain, explicit = make(), make(program=CanvasProgram(tiny_schema()))
    assert plain.program == CanvasProgram(tiny_schema())  # one code path: the default program
    assert plain.hparams["program"] is None and explicit.hparams["program"] is not None  # the public signal
    for name in ("target_mask", "noise_mask", "empty_mask", "position_weight"):
        assert torch.equal(getattr(plain, name), getattr(explicit, name)), name
    for (n, a), (_, b) in zip(plain.state_dict().items(), explicit.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    batch = tiny_batch()
    torch.manual_seed(3)
    loss_a, regions_a = plain.compute_loss(batch)
    torch.manual_seed(3)
    loss_b, regions_b = explicit.compute_loss(batch)
    assert torch.equal(loss_a, loss_b) and regions_a.keys() == regions_b.keys()
    gen = torch.Generator().manual_seed(0)
    sample_a = plain.sample(batch, num_inference_steps=2, generator=gen)
    sample_b = explicit.sample(batch, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(sample_a[k], sample_b[k]) for k in sample_a)


def test_without_a_program_predict_step_returns_every_fed_region_and_checkpoints_hold_no_program(tmp_path) -> None:
    from canvas_engineering import CanvasLayout, CanvasSchema, CanvasTopology, RegionSpec

    layout = CanvasLayout(T=6, H=5, W=4, d_model=32, t_current=3, regions={
        "video": (0, 6, 0, 4, 0, 4), "action": (0, 6, 4, 5, 0, 1),
        "reward": RegionSpec((0, 6, 4, 5, 2, 3), is_output=False)})
    schema = CanvasSchema(layout, CanvasTopology.causal_temporal(list(layout.regions)))
    m = make(schema=schema)
    batch = tiny_batch(2)
    out = m.predict_step(batch)
    assert set(out) == {"video", "action", "reward"}  # an input too, as without programs before
    torch.testing.assert_close(out["reward"], batch["reward"])
    t = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    t.fit(m, tiny_loader(4))
    t.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=False)
    assert "canvas_program" not in saved and saved["hyper_parameters"]["program"] is None
    assert CanvasModule.load_from_checkpoint(tmp_path / "m.ckpt").hparams["program"] is None


def test_a_given_registry_builds_the_backbone_and_is_not_saved() -> None:
    from canvas_engineering.plugin_host.host import PluginRegistry, get_registry

    built = []

    def factory(layout, topology, **config):
        built.append(config)
        return get_registry().backbones["canvas_dit"].obj(layout, topology, **config)

    registry = PluginRegistry()
    registry.backbones.add("recording_dit", factory)
    m = make(backbone="recording_dit", registry=registry)
    assert built == [{**SMALL, "max_loops": 1}]
    assert "registry" not in m.hparams
    with pytest.raises(KeyError, match="recording_dit"):
        make(backbone="recording_dit")  # the process-wide registry does not have it


def test_frame_rules_add_the_previous_frame_and_hold_where_the_clock_is_silent() -> None:
    from canvas_engineering.training.frame_rules import apply_frame_rules

    reward = RegionProgram(family="residual", clock=Clock("periodic", period=2))
    program = CanvasProgram(tiny_schema(), {"reward": reward})
    regions = region_behaviours(program)
    data = torch.arange(6.0).view(1, 6, 1)  # d_k = k
    decoded = torch.full((1, 6, 1), 10.0)  # e_k = 10
    predicted = torch.tensor([False, False, False, True, True, True])
    fires = torch.tensor([[True, False, True, False, True, False]])
    out = apply_frame_rules({"reward": decoded, "video": decoded}, {"reward": data, "video": data}, regions,
                            lambda name: predicted, {"reward": fires})
    # context: e_k + d_{k-1}; predicted: held at the previous value where silent, else e_k + previous
    assert out["reward"].flatten().tolist() == [10.0, 10.0, 11.0, 2.0, 12.0, 12.0]
    assert out["video"] is decoded  # a diffusive, every-frame region passes through


# -- horizon weights -----------------------------------------------------------------------------


def test_horizon_weights_scale_the_loss_weight_of_each_predicted_frame() -> None:
    plain, weighted = make(), make(horizon_weights=[4.0, 2.0])
    frames = plain.layout.position_frames
    predicted = plain.position_weight > 0
    ratio = weighted.position_weight[predicted] / plain.position_weight[predicted]
    # t_current = 3: frames 3, 4, 5 are predicted; frames past the list take its last entry
    assert {f: sorted(set(ratio[frames[predicted] == f].tolist())) for f in (3, 4, 5)} == {
        3: [4.0],
        4: [2.0],
        5: [2.0],
    }
    assert torch.equal(weighted.position_weight[~predicted], plain.position_weight[~predicted])
    # the loss is a weighted mean: the same predictions score differently
    batch = tiny_batch()
    torch.manual_seed(1)
    a, _ = plain.compute_loss(batch)
    weighted.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    b, _ = weighted.compute_loss(batch)
    assert torch.isfinite(b) and not torch.isclose(a, b)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "non-empty list"),
        ("4,2", "non-empty list"),
        ([1.0, float("nan")], r"horizon_weights\[1\]"),
        ([-1.0], r"horizon_weights\[0\]"),
        ([True], r"horizon_weights\[0\]"),
        ([0.0, 0.0], "needs a positive entry"),
    ],
)
def test_horizon_weights_are_validated(value: object, message: str) -> None:
    with pytest.raises(CanvasValidationError, match=message):
        make(horizon_weights=value)
