"""CanvasProgram: JSON round trips, validation naming the culprit, and each property's run-time effect."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from canvas_fixtures import FORMATS, NO_VAL_DATA, tiny_batch, tiny_loader, tiny_schema

from canvas_engineering import (
    CanvasAttention,
    CanvasLayout,
    CanvasModule,
    CanvasProgram,
    CanvasSchema,
    CanvasTopology,
    CanvasValidationError,
    Clock,
    Connection,
    ConnectionProgram,
    ProgramCycleError,
    ProgramValidationError,
    RegionProgram,
    RegionSpec,
    TemporalFill,
    UnknownAttentionTypeError,
)
from canvas_engineering.program import FAMILIES

pytestmark = NO_VAL_DATA

SMALL = {"depth": 1, "n_heads": 2}


def make(program: CanvasProgram | None = None, formats: dict | None = None, **kwargs) -> CanvasModule:
    torch.manual_seed(0)
    kwargs.setdefault("backbone_config", SMALL)
    if program is None:
        return CanvasModule(tiny_schema(), formats or FORMATS, **kwargs)
    return CanvasModule(program=program, region_formats=formats or FORMATS, **kwargs)


def trainer(**kwargs) -> pl.Trainer:
    kwargs.setdefault("max_steps", 1)
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def rich_program() -> CanvasProgram:
    """Every field away from its default, and connections with each fill mode and an order."""
    layout = CanvasLayout(T=6, H=5, W=4, d_model=32, t_current=3, regions={
        "video": (0, 6, 0, 4, 0, 4), "action": (0, 6, 4, 5, 0, 1),
        "reward": RegionSpec((0, 3, 4, 5, 2, 3), period=2), "goal": (0, 6, 4, 5, 3, 4)})
    topology = CanvasTopology([
        Connection("video", "video", t_src=0, t_dst=0),
        Connection("action", "reward", t_src=0, t_dst=0, temporal_fill=TemporalFill.INTERPOLATE,
                   interpolation_order=2.5),
        Connection("action", "video", t_src=0, t_dst=-1, temporal_fill=TemporalFill.DROP, weight=0.5),
        Connection("reward", "goal", fn="pooling"),
    ])
    schema = CanvasSchema(layout, topology, {"data": "tiny"})
    return CanvasProgram(
        schema,
        {
            "video": RegionProgram(family="observation", clock=Clock("periodic", period=2, phase=1)),
            "action": RegionProgram(family="action", carrier="deterministic", loss_weight=3.0, compile_mode="export"),
            "reward": RegionProgram(family="memory",
                                    clock=Clock("on_event", threshold=0.25, cooldown=2, source="action"),
                                    compile_mode="freeze"),
            "goal": RegionProgram(family="residual", clock=Clock("boundary", boundary="end"), compile_mode="constant",
                                  constant_value=tuple(float(i) for i in range(32))),
        },
        [ConnectionProgram(), ConnectionProgram("linear_attention", "gate"), None,
         ConnectionProgram(write_mode="replace")],
        acyclic=True,
        metadata={"author": "test"},
    )


# -- JSON round trips ------------------------------------------------------------------------


def test_json_round_trip_of_text_keeps_every_field() -> None:
    program = rich_program()
    text = program.to_json()
    again = CanvasProgram.from_json(text)
    assert again == program
    assert again.to_dict() == program.to_dict()
    conns = json.loads(text)["schema"]["topology"]["connections"]
    assert [c["temporal_fill"] for c in conns] == ["hold", "interpolate", "drop", "hold"]
    assert conns[1]["interpolation_order"] == 2.5
    assert again.schema.topology.connections[1].interpolation_order == 2.5
    assert again.schema.topology.connections[2].temporal_fill is TemporalFill.DROP
    assert again.regions["reward"].clock == Clock("on_event", threshold=0.25, cooldown=2, source="action")
    assert again.regions["goal"].constant_value == tuple(float(i) for i in range(32))
    assert again.connections[1] == ConnectionProgram("linear_attention", "gate")
    assert again.acyclic and again.metadata == {"author": "test"}


def test_json_round_trip_through_a_file(tmp_path) -> None:
    program = rich_program()
    path = tmp_path / "program.json"
    program.to_json(path)
    assert not list(tmp_path.glob(".program.json.*"))  # atomic write leaves no temp file
    assert CanvasProgram.from_json(path) == program
    assert CanvasProgram.from_json(str(path)) == program
    assert CanvasProgram.coerce(program.to_dict()) == program


def test_from_families_round_trips_and_fills_defaults() -> None:
    program = CanvasProgram.from_families(tiny_schema().layout, {"video": "observation", "action": "action"})
    assert program.regions["reward"] == RegionProgram()  # unlisted regions are plain state
    assert CanvasProgram.from_json(program.to_json()) == program


def test_checkpoint_reloads_the_program(tmp_path) -> None:
    program = CanvasProgram(tiny_schema(), {"reward": RegionProgram(clock=Clock("periodic", period=2))})
    m = make(program)
    t = trainer(max_steps=1)
    t.fit(m, tiny_loader(4))
    t.save_checkpoint(tmp_path / "m.ckpt")
    loaded = CanvasModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.program == program
    with pytest.raises(CanvasValidationError, match="trained with a CanvasProgram and this model has none"):
        CanvasModule.load_from_checkpoint(tmp_path / "m.ckpt", program=None)


def test_json_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ProgramValidationError, match="missing key 'schema'"):
        CanvasProgram.from_dict({"regions": {}})
    with pytest.raises(ProgramValidationError, match="version"):
        CanvasProgram.from_dict({**rich_program().to_dict(), "version": 99})
    with pytest.raises(ProgramValidationError, match="cannot read"):
        CanvasProgram.from_json(tmp_path / "absent.json")
    data = rich_program().to_dict()
    data["regions"]["video"]["clock"]["period"] = 0
    with pytest.raises(ProgramValidationError, match=r"region 'video': clock period 0 must be an integer >= 1"):
        CanvasProgram.from_dict(data)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regions", "pattern"),
    [
        ({"video": {"family": "sensor"}}, r"region 'video'.*unknown family 'sensor'"),
        ({"action": {"carrier": "kalman"}}, r"region 'action'.*unknown carrier 'kalman'"),
        ({"reward": {"compile_mode": "jit"}}, r"region 'reward'.*unknown compile mode 'jit'"),
        ({"reward": {"clock": {"period": 0}}}, r"region 'reward': clock period 0 must be an integer >= 1"),
        ({"reward": {"clock": {"period": 3, "phase": 3}}},
         r"region 'reward': clock phase 3 must be .* \[0, period=3\)"),
        ({"reward": {"clock": {"kind": "on_event", "cooldown": -1}}}, r"region 'reward': clock cooldown -1"),
        ({"reward": {"clock": {"kind": "on_event", "threshold": -0.5}}}, r"region 'reward': clock threshold -0.5"),
        ({"reward": {"clock": {"kind": "sometimes"}}}, r"region 'reward'.*unknown kind 'sometimes'"),
        ({"reward": {"clock": {"kind": "on_event", "source": "radar"}}},
         r"region 'reward': clock source 'radar' is not a region"),
        ({"reward": {"loss_weight": -1}}, r"region 'reward': loss_weight -1"),
        ({"reward": {"compile_mode": "constant", "constant_value": [1.0, 2.0]}},
         r"region 'reward': constant_value has 2 entries.*d_model=32"),
        ({"lidar": "state"}, r"region program for unknown region 'lidar'; layout regions: video, action, reward"),
    ],
)
def test_region_rules_name_the_region(regions: dict, pattern: str) -> None:
    with pytest.raises(ProgramValidationError, match=pattern):
        CanvasProgram(tiny_schema(), regions)


def test_connection_rules_name_the_connection() -> None:
    schema = tiny_schema()  # causal_temporal: connection #0 is 'video'->'video'
    unknown = r"connection 'video'->'video' \(#0\) operator: unknown attention type 'teleport'"
    with pytest.raises(UnknownAttentionTypeError, match=unknown):
        CanvasProgram(schema, connections={0: {"operator": "teleport"}})
    bad_mode = r"connection 'action'->'action' \(#1\).*unknown write mode 'overwrite'"
    with pytest.raises(ProgramValidationError, match=bad_mode):
        CanvasProgram(schema, connections={1: {"write_mode": "overwrite"}})
    with pytest.raises(ProgramValidationError, match=r"has 2 entries but the topology has 12 connections"):
        CanvasProgram(schema, connections=[ConnectionProgram(), ConnectionProgram()])
    with pytest.raises(ProgramValidationError, match=r"key 12 must be a connection index in \[0, 12\)"):
        CanvasProgram(schema, connections={12: ConnectionProgram()})


def test_acyclic_refuses_a_cycle_naming_its_connections() -> None:
    layout = tiny_schema().layout
    pairs = [("video", "video"), ("video", "action"), ("action", "reward"), ("reward", "video")]
    conns = [Connection(src, dst) for src, dst in pairs]
    schema = CanvasSchema(layout, CanvasTopology(conns))
    CanvasProgram(schema)  # cycles are fine unless asked
    cycle = (r"cycle: connection 'video'->'action' \(#1\), connection 'action'->'reward' \(#2\), "
             r"connection 'reward'->'video' \(#3\)")
    with pytest.raises(ProgramCycleError, match=cycle) as info:
        CanvasProgram(schema, acyclic=True)
    assert info.value.connections == (1, 2, 3)
    # an edge whose operator is "none" is disabled, so it breaks the cycle
    CanvasProgram(schema, connections={3: ConnectionProgram("none")}, acyclic=True)
    # the family wiring is acyclic
    families = {"video": "observation", "action": "action", "reward": "residual"}
    CanvasProgram.from_families(layout, families, acyclic=True)


def test_from_families_names_an_unknown_family_or_region() -> None:
    layout = tiny_schema().layout
    with pytest.raises(ProgramValidationError, match=r"region 'action': unknown family 'motor'"):
        CanvasProgram.from_families(layout, {"action": "motor"})
    with pytest.raises(ProgramValidationError, match=r"unknown region 'lidar'"):
        CanvasProgram.from_families(layout, {"lidar": "observation"})


def test_module_refuses_an_unfed_event_source_and_a_disagreeing_schema() -> None:
    program = CanvasProgram(tiny_schema(), {"reward": RegionProgram(clock=Clock("on_event", source="action"))})
    formats = {k: v for k, v in FORMATS.items() if k != "action"}
    unfed = r"region 'reward': its on_event clock watches region 'action', which the batch does not feed"
    with pytest.raises(CanvasValidationError, match=unfed):
        make(program, formats)
    differ = r"schema and program.schema differ at layout.regions.action.bounds\[5\]"
    with pytest.raises(CanvasValidationError, match=differ):
        CanvasModule(tiny_schema(action_width=2), FORMATS, program=program, backbone_config=SMALL)


# -- families: default wiring and losses -----------------------------------------------------


def test_families_pick_default_wiring_carriers_and_losses() -> None:
    layout = CanvasLayout(T=4, H=5, W=4, d_model=32, t_current=2, regions={
        "obs": (0, 4, 0, 4, 0, 4), "state": (0, 4, 4, 5, 0, 1), "mem": (0, 4, 4, 5, 1, 2),
        "act": (0, 4, 4, 5, 2, 3), "err": (0, 4, 4, 5, 3, 4)})
    families = {"obs": "observation", "state": "state", "mem": "memory", "act": "action", "err": "residual"}
    program = CanvasProgram.from_families(layout, families)
    edges = {(c.src, c.dst, c.t_dst) for c in program.schema.topology.connections}
    for name in families:  # every region reads itself at its frame and the previous one
        assert {(name, name, 0), (name, name, -1)} <= edges
    cross = {(s, d) for s, d, _ in edges if s != d}
    assert cross == {("state", "obs"), ("mem", "state"), ("act", "state"), ("act", "obs"),
                     ("err", "obs"), ("err", "state"), ("err", "mem"), ("err", "act")}
    assert {n: program.regions[n].carrier for n in families} == {
        "obs": "filter", "state": "diffusive", "mem": "memory", "act": "diffusive", "err": "residual"}
    assert program.loss_weight("act") == 2.0 == FAMILIES["action"].loss_scale
    assert program.loss_weight("err") == 0.5
    # the module weighs the action's predicted positions by its family's loss scale
    formats = {"obs": {"kind": "patches", "channels": 1, "patch_size": 2}, "state": {"kind": "vector", "dim": 3},
               "mem": {"kind": "vector", "dim": 3}, "act": {"kind": "action", "dim": 2},
               "err": {"kind": "vector", "dim": 1}}
    m = make(program, formats)
    act = layout.region_indices("act")
    assert m.position_weight[act].tolist() == [0.0, 0.0, 2.0, 2.0]


def test_an_empty_program_runs_like_no_program() -> None:
    plain, programmed = make(), make(CanvasProgram(tiny_schema()))
    for name in ("target_mask", "noise_mask", "position_weight"):
        assert torch.equal(getattr(plain, name), getattr(programmed, name)), name
    batch = tiny_batch()
    torch.manual_seed(3)
    a = plain.compute_loss(batch)[0]
    torch.manual_seed(3)
    b = programmed.compute_loss(batch)[0]
    torch.testing.assert_close(a, b)


# -- compile modes ---------------------------------------------------------------------------


def test_a_frozen_region_does_not_change_over_a_trainer_step() -> None:
    m = make(CanvasProgram(tiny_schema(), {"action": RegionProgram(compile_mode="freeze")}), lr=1e-2)
    codec = torch.nn.ModuleDict({"enc": m.encoders["action"], "dec": m.decoders["action"]})
    frozen = {k: v.clone() for k, v in codec.state_dict().items()}
    live = m.encoders["video"].proj.weight.clone()
    assert not any(p.requires_grad for p in [*m.encoders["action"].parameters(), *m.decoders["action"].parameters()])
    trainer(max_steps=2).fit(m, tiny_loader(8))
    after = codec.state_dict()
    for k, v in frozen.items():
        assert torch.equal(v, after[k]), k
    assert not torch.equal(live, m.encoders["video"].proj.weight)  # the others did learn
    # its tokens are detached: nothing flows back into the region's encoder input
    x = tiny_batch(2)["action"].requires_grad_(True)
    m.encode({**tiny_batch(2), "action": x}).sum().backward()
    assert x.grad is None and m.encoders["video"].proj.weight.grad is not None


def test_a_constant_region_is_folded_out() -> None:
    program = CanvasProgram(tiny_schema(), {"reward": RegionProgram(compile_mode="constant", constant_value=0.5)})
    m = make(program)  # FORMATS still lists "reward": it is ignored
    reward = m.layout.region_indices("reward")
    assert "reward" not in m.encoders and "reward" not in m.decoders
    # never run as a query: no attention group of any block has a reward position among its queries
    groups = [g for mod in m.backbone.modules() if isinstance(mod, CanvasAttention) for g in mod.groups]
    assert groups and not any(bool(torch.isin(g.q_positions, reward).any()) for g in groups)
    # ... but still read as a key, with its fixed content
    assert any(bool(torch.isin(g.k_positions, reward).any()) for g in groups)
    batch = {k: v for k, v in tiny_batch().items() if k != "reward"}  # a batch may omit it
    clean = m.encode(batch)
    assert torch.equal(clean[:, reward], torch.full_like(clean[:, reward], 0.5))
    assert not bool(m.target_mask[reward].any())
    noisy = m._noised(clean, torch.full((4,), 999))
    assert torch.equal(noisy[:, reward], clean[:, reward])  # never noised
    loss, regions = m.compute_loss(batch)
    assert "reward" not in regions and torch.isfinite(loss)
    assert "reward" not in m.predict_step(batch)


def test_an_export_region_is_returned_even_if_it_is_an_input() -> None:
    layout = CanvasLayout(T=6, H=5, W=4, d_model=32, t_current=3, regions={
        "video": (0, 6, 0, 4, 0, 4), "action": (0, 6, 4, 5, 0, 1),
        "reward": RegionSpec((0, 6, 4, 5, 2, 3), is_output=False)})
    schema = CanvasSchema(layout, CanvasTopology.causal_temporal(list(layout.regions)))
    batch = tiny_batch(2)
    plain = make(CanvasProgram(schema)).predict_step(batch)
    assert set(plain) == {"video", "action"}  # an input is not returned by default
    out = make(CanvasProgram(schema, {"reward": RegionProgram(compile_mode="export")})).predict_step(batch)
    assert set(out) == {"video", "action", "reward"}
    torch.testing.assert_close(out["reward"], batch["reward"])  # an input's value is its data
    torch.testing.assert_close(out["video"][:, :3], batch["video"][:, :3])  # context frames are the data


# -- clocks ----------------------------------------------------------------------------------


def event_batch() -> dict[str, torch.Tensor]:
    """Actions constant over time except sample 0, which jumps at frame 5."""
    batch = tiny_batch(2)
    batch["action"] = torch.ones(2, 6, 2)
    batch["action"][0, 5:] = 3.0
    return batch


def test_an_on_event_clock_holds_its_region_until_the_event_fires() -> None:
    clock = Clock("on_event", threshold=0.5, source="action")
    program = CanvasProgram(tiny_schema(), {"reward": RegionProgram(clock=clock)})
    m = make(program)
    batch = event_batch()
    update = m.update_masks(batch)["reward"]
    assert update.tolist() == [[False] * 5 + [True], [False] * 6]
    with torch.no_grad():
        pred, _ = m(batch, torch.full((2,), 500))
    initial = batch["reward"][:, 2]  # the last context frame
    for k in (3, 4):  # predicted frames before the event hold the initial value
        torch.testing.assert_close(pred["reward"][:, k], initial)
    assert not torch.allclose(pred["reward"][0, 5], initial[0])  # it changes where the event fires
    torch.testing.assert_close(pred["reward"][1, 5], initial[1])  # and not where it never fires
    # held frames take no loss
    w = m.position_weights(batch)["reward"]
    assert w.tolist() == [[0.0] * 5 + [1.0], [0.0] * 6]
    loss, regions = m.compute_loss(batch)
    assert regions["reward"][1] == 1.0 and torch.isfinite(loss)


def test_a_periodic_clock_updates_on_its_phase_and_holds_between() -> None:
    program = CanvasProgram(tiny_schema(), {"action": RegionProgram(clock=Clock("periodic", period=2, phase=0))})
    m = make(program)
    batch = tiny_batch(2)
    assert m.update_masks(batch)["action"][0].tolist() == [True, False, True, False, True, False]
    with torch.no_grad():
        pred, _ = m(batch, torch.full((2,), 500))
    torch.testing.assert_close(pred["action"][:, 3], batch["action"][:, 2])  # frame 3 holds context frame 2
    torch.testing.assert_close(pred["action"][:, 5], pred["action"][:, 4])  # frame 5 holds predicted frame 4
    assert not torch.allclose(pred["action"][:, 4], batch["action"][:, 2])


def test_clock_masks() -> None:
    real = torch.arange(6)
    periodic = Clock("periodic", period=3, phase=1).update_mask(real, 1)
    assert periodic[0].tolist() == [False, True, False, False, True, False]
    assert Clock("boundary", boundary="start").update_mask(real, 1)[0].tolist() == [True] + [False] * 5
    assert Clock("boundary", boundary="both").update_mask(real, 1)[0].tolist() == [True] + [False] * 4 + [True]
    # events at watched frames 1, 2, 3 and 5; a cooldown of 1 suppresses the frame after each firing
    watched = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 4.0])[None, :, None]
    clock = Clock("on_event", threshold=0.5, cooldown=1)
    assert clock.update_mask(real, 1, watched, real)[0].tolist() == [False, True, False, True, False, True]
    # a slow region (real times 0, 2, 4) fires when an event falls in (previous frame, its frame]
    slow = Clock("on_event", threshold=0.5).update_mask(torch.tensor([0, 2, 4]), 1, watched, real)
    assert slow[0].tolist() == [False, True, True]


# -- carriers --------------------------------------------------------------------------------


def test_deterministic_and_memory_carriers_are_not_noised() -> None:
    regions = {"action": RegionProgram(carrier="deterministic"), "reward": RegionProgram(family="memory")}
    program = CanvasProgram(tiny_schema(), regions)
    m = make(program)
    action, reward = m.layout.region_indices("action"), m.layout.region_indices("reward")
    assert bool(m.target_mask[action][3:].all()) and not bool(m.noise_mask[action].any())
    assert not bool(m.noise_mask[reward].any())
    clean = m.encode(tiny_batch())
    noisy = m._noised(clean, torch.full((4,), 999))
    assert torch.equal(noisy[:, action[3:]], torch.zeros_like(noisy[:, action[3:]]))  # emptied, not noised
    assert torch.equal(noisy[:, action[:3]], clean[:, action[:3]])  # past frames given
    out = m.predict_step(tiny_batch(2))
    assert out["memory_out"]["reward"].shape == (2, 1)
    torch.testing.assert_close(out["memory_out"]["reward"], out["reward"][:, -1])


def test_a_filter_carrier_predicts_the_future_of_an_input() -> None:
    layout = CanvasLayout(T=6, H=5, W=4, d_model=32, t_current=3, regions={
        "video": RegionSpec((0, 6, 0, 4, 0, 4), is_output=False),
        "action": (0, 6, 4, 5, 0, 1), "reward": (0, 6, 4, 5, 2, 3)})
    schema = CanvasSchema(layout, CanvasTopology.causal_temporal(list(layout.regions)))
    video = layout.region_indices("video")
    assert not bool(make(CanvasProgram(schema)).target_mask[video].any())  # diffusive input: context only
    m = make(CanvasProgram(schema, {"video": RegionProgram(family="observation")}))  # filter
    frames = layout.position_frames[video]
    assert torch.equal(m.noise_mask[video], frames >= 3)
    assert "video" in m.compute_loss(tiny_batch())[1]


def test_a_residual_carrier_adds_the_previous_frame() -> None:
    m = make(CanvasProgram(tiny_schema(), {"reward": RegionProgram(family="residual")}))
    batch, t = tiny_batch(2), torch.full((2,), 300)
    with torch.no_grad():
        x = m._noised(m.encode(batch), t)
        pred, _ = m(batch, t, canvas=x)
        raw = m.decode(m.backbone(x, t))["reward"]
    r, data = pred["reward"], batch["reward"]
    torch.testing.assert_close(r[:, 0], raw[:, 0])
    torch.testing.assert_close(r[:, 1], raw[:, 1] + data[:, 0])  # context frame: plus the data before it
    torch.testing.assert_close(r[:, 3], raw[:, 3] + data[:, 2])  # first predicted frame: plus the last context frame
    torch.testing.assert_close(r[:, 4], raw[:, 4] + r[:, 3])  # later ones: plus its own prediction


# -- operators and write modes ---------------------------------------------------------------


def two_region_attention(modes: list[str]) -> tuple[CanvasAttention, torch.Tensor]:
    layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topology = CanvasTopology([Connection("a", "a"), Connection("a", "b"), Connection("b", "b")])
    torch.manual_seed(0)
    attn = CanvasAttention(layout, topology, n_heads=2, kernel="dense", write_modes=modes)
    return attn, torch.randn(2, layout.num_positions, 16)


def raw_outputs(attn: CanvasAttention, x: torch.Tensor) -> list[torch.Tensor]:
    return [g.op(x[:, g.q_positions], x[:, g.k_positions], g.mask, 1.0) for g in attn.groups]


def test_add_write_mode_sums_group_outputs() -> None:
    attn, x = two_region_attention(["add", "add", "add"])
    assert len(attn.groups) == 1  # one type, one mode: one group, run once
    attn2, _ = two_region_attention(["add", "gate", "add"])
    assert [(g.fn, g.write_mode, len(g.connections)) for g in attn2.groups] == [
        ("cross_attention", "add", 2), ("cross_attention", "gate", 1)]
    expected = torch.zeros_like(x)
    for g, y in zip(attn2.groups, raw_outputs(attn2, x), strict=True):
        if g.write_mode == "add":
            expected = expected.index_add(1, g.q_positions, y)
    gate = attn2.groups[1]
    expected = expected.index_add(1, gate.q_positions, 0.5 * raw_outputs(attn2, x)[1])  # sigmoid(0) = 0.5
    torch.testing.assert_close(attn2(x), expected)


def test_gate_write_mode_learns_its_gate() -> None:
    attn, x = two_region_attention(["add", "gate", "add"])
    gate = attn.groups[1]
    with torch.no_grad():
        gate.gate_logit.fill_(2.0)
    add_only = torch.zeros_like(x).index_add(1, attn.groups[0].q_positions, raw_outputs(attn, x)[0])
    gated = torch.sigmoid(torch.tensor(2.0)) * raw_outputs(attn, x)[1]
    torch.testing.assert_close(attn(x), add_only.index_add(1, gate.q_positions, gated))
    attn(x).square().sum().backward()
    assert gate.gate_logit.grad is not None and bool(gate.gate_logit.grad.abs().sum() > 0)


def test_replace_write_mode_overwrites_where_it_writes() -> None:
    attn, x = two_region_attention(["add", "add", "replace"])  # b->b replaces at b's positions
    add, rep = attn.groups
    assert rep.write_mode == "replace"
    y_add, y_rep = raw_outputs(attn, x)
    expected = torch.zeros_like(x).index_add(1, add.q_positions, y_add)
    expected[:, rep.q_positions] = y_rep
    torch.testing.assert_close(attn(x), expected)
    # replacing a's queries discards the add group's update there
    attn2, _ = two_region_attention(["add", "replace", "add"])
    out = attn2(x)
    groups = {g.write_mode: (g, y) for g, y in zip(attn2.groups, raw_outputs(attn2, x), strict=True)}
    g, y = groups["replace"]
    torch.testing.assert_close(out[:, g.q_positions], y)


def test_write_modes_are_checked_and_reach_the_backbone() -> None:
    with pytest.raises(CanvasValidationError, match=r"connection 'a'->'b' \(#1\): unknown write mode 'mix'"):
        two_region_attention(["add", "mix", "add"])
    with pytest.raises(CanvasValidationError, match="2 write_modes for 3 connections"):
        two_region_attention(["add", "add"])
    connections = {0: ConnectionProgram("linear_attention", "gate"), 1: {"write_mode": "replace"}}
    program = CanvasProgram(tiny_schema(), connections=connections)
    m = make(program)
    attn = next(mod for mod in m.backbone.modules() if isinstance(mod, CanvasAttention))
    kinds = {(g.fn, g.write_mode) for g in attn.groups}
    assert {("linear_attention", "gate"), ("cross_attention", "replace"), ("cross_attention", "add")} == kinds
    assert any("gate_logit" in n for n, _ in m.named_parameters())
    assert torch.isfinite(m.compute_loss(tiny_batch())[0])


# -- errors keep their attributes through every path -------------------------------------------


def test_a_cycle_error_from_from_dict_keeps_its_connections() -> None:
    layout = tiny_schema().layout
    conns = [Connection(src, dst) for src, dst in [("video", "action"), ("action", "reward"), ("reward", "video")]]
    data = CanvasProgram(CanvasSchema(layout, CanvasTopology(conns))).to_dict()
    data["acyclic"] = True
    with pytest.raises(ProgramCycleError, match=r"^program: CanvasProgram\(acyclic=True\).*cycle") as info:
        CanvasProgram.from_dict(data)
    assert info.value.connections == (0, 1, 2)
    with pytest.raises(ProgramCycleError) as from_text:
        CanvasProgram.from_json(json.dumps(data))
    assert from_text.value.connections == (0, 1, 2)


def test_an_unknown_operator_from_from_dict_keeps_its_class_and_names_the_connection() -> None:
    data = CanvasProgram(tiny_schema()).to_dict()
    data["connections"][0]["operator"] = "teleport"
    with pytest.raises(UnknownAttentionTypeError, match=r"program: connection 'video'->'video' \(#0\) operator"):
        CanvasProgram.from_dict(data)


def test_program_errors_live_in_the_error_hierarchy_and_old_imports_work() -> None:
    import canvas_engineering.errors as errors
    import canvas_engineering.program as program_package

    assert program_package.ProgramCycleError is errors.ProgramCycleError
    assert program_package.ProgramValidationError is errors.ProgramValidationError
    assert issubclass(errors.ProgramCycleError, errors.ProgramValidationError)
    assert issubclass(errors.ProgramValidationError, CanvasValidationError)
    from canvas_engineering.program import CARRIERS, COMPILE_MODES, PROGRAM_FORMAT_VERSION, WRITE_MODES, FamilyDefaults

    assert set(CARRIERS) == {"deterministic", "diffusive", "filter", "memory", "residual"}
    assert COMPILE_MODES == ("runtime", "freeze", "constant", "export") and WRITE_MODES == ("add", "replace", "gate")
    assert PROGRAM_FORMAT_VERSION == 1
    assert FAMILIES["action"] == FamilyDefaults("diffusive", 2.0, ("state", "observation"))
