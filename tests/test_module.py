"""CanvasModule: training step semantics, bad input, checkpoints, sampling."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from canvas_fixtures import FORMATS, NO_VAL_DATA, tiny_batch, tiny_loader, tiny_schema

from canvas_engineering import BatchValidationError, CanvasModule, CanvasValidationError, NonFiniteLossError

pytestmark = NO_VAL_DATA


def make(**kwargs) -> CanvasModule:
    torch.manual_seed(0)
    kwargs.setdefault("backbone_config", {"depth": 1, "n_heads": 2})
    return CanvasModule(tiny_schema(), FORMATS, **kwargs)


def trainer(**kwargs) -> pl.Trainer:
    kwargs.setdefault("max_steps", 4)
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def test_hyperparameters_are_saved_and_serialisable() -> None:
    m = make(max_loops=2, lr=1e-3)
    assert m.hparams["schema"] == tiny_schema().to_dict()
    assert m.hparams["region_formats"]["video"] == {"kind": "patches", "channels": 1, "patch_size": 4, "dim": 0}
    assert m.hparams["max_loops"] == 2 and m.hparams["lr"] == 1e-3
    assert m.max_loops == 2


def test_only_future_output_positions_are_noised_and_weighted() -> None:
    m = make()
    layout = m.layout
    frames = layout.position_frames
    # every noised position is in an output region at a frame >= t_current, and each such position is noised
    assert bool((frames[m.target_mask] >= layout.t_current).all())
    video = layout.region_indices("video")
    assert int(m.target_mask[video].sum()) == 3 * 16
    # unassigned positions never are
    assert not bool(m.target_mask[layout.position_region_ids == len(layout.regions)].any())
    clean = m.encode(tiny_batch())
    noisy = m._noised(clean, torch.full((4,), 999))
    assert torch.equal(noisy[:, ~m.target_mask], clean[:, ~m.target_mask])
    assert not torch.allclose(noisy[:, m.target_mask], clean[:, m.target_mask])


def test_input_regions_take_no_loss() -> None:
    from canvas_engineering import CanvasLayout, CanvasSchema, CanvasTopology, RegionSpec

    layout = CanvasLayout(T=6, H=5, W=4, d_model=32, t_current=3, regions={
        "video": (0, 6, 0, 4, 0, 4), "action": (0, 6, 4, 5, 0, 1),
        "reward": RegionSpec((0, 6, 4, 5, 2, 3), is_output=False)})
    m = CanvasModule(CanvasSchema(layout, CanvasTopology.dense(list(layout.regions))), FORMATS,
                     backbone_config={"depth": 1, "n_heads": 2})
    assert not bool(m.target_mask[layout.region_indices("reward")].any())
    assert "reward" not in m.metrics["train_metrics"]


def test_fit_lowers_the_loss_and_logs_per_region() -> None:
    m = make(lr=3e-3)
    batch = tiny_batch(8)
    torch.manual_seed(1)
    with torch.no_grad():
        before = float(m.compute_loss(batch)[0])
    trainer(max_steps=40).fit(m, tiny_loader(8, batch_size=8))
    torch.manual_seed(1)
    with torch.no_grad():
        after = float(m.compute_loss(batch)[0])
    assert after < before
    logged = trainer(max_steps=2)
    logged.validate(m, tiny_loader(8))
    assert {"val/loss", "val/video/loss", "val/action/loss", "val/reward/loss"} <= set(logged.callback_metrics)


def test_configure_optimizers_uses_only_trainable_parameters() -> None:
    m = make()
    for p in m.encoders.parameters():
        p.requires_grad_(False)
    opt = m.configure_optimizers()
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not ids & {id(p) for p in m.encoders.parameters()}
    assert ids == {id(p) for p in m.parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda b: b.pop("action"), r"batch is missing region 'action' \(expected shape \(B, 6, 2\)\)"),
        (lambda b: b.update(video=torch.rand(4, 6, 1, 12, 16)),
         r"region 'video': expected a tensor of shape \(B, 6, 1, 16, 16\), received \(4, 6, 1, 12, 16\)"),
        (lambda b: b.update(reward=torch.rand(4, 5, 1)),
         r"region 'reward': expected .*\(B, 6, 1\), received \(4, 5, 1\)"),
        (lambda b: b.update(action=[1, 2]), r"region 'action': expected .* received list"),
    ],
)
def test_bad_batches_fail_at_the_first_step_naming_the_region(change, pattern) -> None:
    m = make()
    batch = tiny_batch()
    change(batch)

    class Bad(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int):
            return batch

    loader = torch.utils.data.DataLoader(Bad(), batch_size=None)
    t = trainer(max_steps=3)
    with pytest.raises(BatchValidationError, match=pattern):
        t.fit(m, loader)
    assert t.global_step == 0


def test_non_finite_loss_stops_training_before_a_checkpoint_is_written(tmp_path) -> None:
    m = make()
    batch = tiny_batch()
    batch["reward"][0, 0, 0] = math.inf
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1)
    t = pl.Trainer(accelerator="cpu", logger=False, callbacks=[ckpt], max_steps=3, enable_progress_bar=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss .* at step 0 .*reward="):
        t.fit(m, loader)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_round_trip_and_layout_mismatch(tmp_path) -> None:
    m = make()
    t = trainer(max_steps=2)
    t.fit(m, tiny_loader())
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    loaded = CanvasModule.load_from_checkpoint(path)
    for (name, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CanvasValidationError, match=r"different canvas: layout\.regions\.action\.bounds\[5\]: 1 vs 2"):
        CanvasModule.load_from_checkpoint(path, schema=tiny_schema(action_width=2))


def test_sample_keeps_context_and_predicts_the_future() -> None:
    m = make()
    trainer(max_steps=3).fit(m, tiny_loader())
    with torch.no_grad():  # a freshly trained DiT is nearly input-independent (zero-init output layer)
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    batch = tiny_batch(2, seed=5)
    out = m.sample(batch, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"video", "action", "reward"}
    assert out["video"].shape == (2, 6, 1, 16, 16) and out["action"].shape == (2, 6, 2)
    again = m.sample(batch, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["action"], again["action"])
    # the future depends on the context
    other = m.sample({**batch, "video": torch.rand_like(batch["video"])}, num_inference_steps=3,
                     generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out["action"][:, 3:], other["action"][:, 3:])
    preds = trainer().predict(m, tiny_loader(4))
    assert preds[0]["action"].shape == (4, 6, 2)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_loops": 0}, "max_loops=0"),
        ({"lr": -1.0}, r"lr=-1\.0"),
        ({"num_inference_steps": 0}, "num_inference_steps=0"),
        ({"backbone": "nope"}, "nope"),
    ],
)
def test_bad_arguments_are_named(kwargs, pattern) -> None:
    with pytest.raises((CanvasValidationError, KeyError), match=pattern):
        make(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_loops": True}, r"CanvasModule\.max_loops=True must be an integer >= 1"),
        ({"lr": math.inf}, r"CanvasModule\.lr=inf must be a finite number > 0"),
        ({"lr": True}, r"CanvasModule\.lr=True must be a finite number > 0"),
        ({"warmup_steps": False}, r"CanvasModule\.warmup_steps=False must be an integer >= 0"),
        ({"sample_metrics": 1}, r"CanvasModule\.sample_metrics=1 must be a bool"),
        ({"num_inference_steps": 10_000}, r"num_inference_steps=10000 must be an integer in \[1, num_train_timesteps="),
    ],
)
def test_hyperparameters_refuse_bools_and_non_finite_numbers(kwargs, pattern) -> None:
    # bools used to pass as integers (max_loops=True ran one loop) and lr=inf used to be accepted
    with pytest.raises(CanvasValidationError, match=pattern):
        make(**kwargs)


def test_region_formats_are_checked_against_the_layout() -> None:
    with pytest.raises(CanvasValidationError, match="unknown region 'camera'"):
        CanvasModule(tiny_schema(), {"camera": {"kind": "vector", "dim": 2}})
    with pytest.raises(CanvasValidationError, match="region 'video' format: a 'patches' region needs"):
        CanvasModule(tiny_schema(), {"video": {"kind": "patches", "channels": 0, "patch_size": 4}})


def test_loaded_model_runs_with_its_trained_loops_and_betas(tmp_path) -> None:
    m = make(max_loops=3)
    t = trainer(max_steps=1)
    t.fit(m, tiny_loader())
    m.set_loops(2)
    m.set_betas([1.0, 1.5, 2.0])
    t.save_checkpoint(tmp_path / "m.ckpt")
    loaded = CanvasModule.load_from_checkpoint(tmp_path / "m.ckpt")
    block = loaded.backbone.looped_blocks[0]
    assert block.current_loops == 2 and block.betas == [1.0, 1.5, 2.0]


def test_nested_typed_schema_trains_with_dotted_region_names() -> None:
    from dataclasses import dataclass, field

    from canvas_engineering import Field, compile_schema

    @dataclass
    class Arm:
        joints: Field = Field(1, 1)

    @dataclass
    class Robot:
        camera: Field = Field(2, 2)
        arm: Arm = field(default_factory=Arm)

    bound = compile_schema(Robot(), T=4, d_model=16, connectivity="causal", t_current=2)
    formats = {"camera": {"kind": "patches", "channels": 1, "patch_size": 2},
               "arm.joints": {"kind": "vector", "dim": 3}}
    m = CanvasModule(bound, formats, backbone_config={"depth": 1, "n_heads": 2})  # a BoundSchema is accepted
    batch = {"camera": torch.rand(2, 4, 1, 4, 4), "arm.joints": torch.randn(2, 4, 3)}
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in batch.items()} for i in range(2)], batch_size=2)
    t = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, max_steps=1, limit_val_batches=1)
    t.fit(m, loader, loader)
    assert "val/arm.joints/loss" in t.callback_metrics


def test_sample_returns_the_context_frames_as_given() -> None:
    m = make()
    batch = tiny_batch(2, seed=3)
    out = m.sample(batch, num_inference_steps=2)
    assert torch.equal(out["video"][:, :3], batch["video"][:, :3])
    assert torch.equal(out["action"][:, :3], batch["action"][:, :3])
    assert not torch.equal(out["action"][:, 3:], batch["action"][:, 3:])


def test_atomic_writes_have_ordinary_permissions(tmp_path) -> None:
    import os

    from canvas_engineering._atomic import atomic_write_text

    path = atomic_write_text(tmp_path / "f.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
