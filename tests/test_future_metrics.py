"""Metrics of the sampled future and their baselines: values, logging names, datamodule baselines."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from canvas_engineering.datamodules import BouncingBallsDataModule
from canvas_engineering.datamodules.bouncing_balls import constant_velocity_track, reflect
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_engineering import CanvasModule
from canvas_engineering.training.future_metrics import FutureFrameMetric, repeat_last_baseline


def test_metric_is_per_frame_mse_and_ssim_of_one() -> None:
    target = torch.rand(3, 2, 1, 16, 16)
    pred = target.clone()
    pred[:, 1] += 0.5
    metric = FutureFrameMetric(2, images=True)
    metric.update(pred[:2], target[:2])
    metric.update(pred[2:], target[2:])
    out = metric.compute()
    assert torch.allclose(out["mse"], torch.tensor([0.0, 0.25]))
    assert out["ssim"][0] == pytest.approx(1.0, abs=1e-5) and out["ssim"][1] < 1.0


def test_metric_without_images_has_no_ssim_and_refuses_bad_shapes() -> None:
    metric = FutureFrameMetric(3, images=False)
    metric.update(torch.ones(2, 3, 4), torch.zeros(2, 3, 4))
    assert set(metric.compute()) == {"mse"} and torch.equal(metric.compute()["mse"], torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B, 3, \.\.\.\)"):
        metric.update(torch.ones(2, 2, 4), torch.zeros(2, 2, 4))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=2, max_size=9))
def test_repeat_last_repeats_the_latest_context_frame(flags: list[bool]) -> None:
    predicted = torch.tensor(flags)
    data = torch.arange(len(flags), dtype=torch.float32).view(1, -1, 1).expand(2, -1, 3)
    out = repeat_last_baseline(data, predicted)
    if flags[0]:
        assert out is None
        return
    last = 0
    for k, is_predicted in enumerate(flags):
        last = last if is_predicted else k
        assert bool((out[:, k] == last).all())


def test_reflect_folds_into_the_box() -> None:
    x = np.array([-1.0, 0.0, 3.0, 15.0, 16.5, 31.0, 40.0])
    assert np.allclose(reflect(x, 0.0, 15.0), [1.0, 0.0, 3.0, 15.0, 13.5, 1.0, 10.0])


def test_constant_velocity_track_moves_each_ball_in_a_straight_line() -> None:
    track = np.zeros((1, 5, 1, 2))
    track[0, :, 0] = [[2, 2], [3, 4], [4, 6], [9, 9], [9, 9]]
    velocity = np.zeros_like(track)
    velocity[0, 2, 0] = [1, 2]
    out = constant_velocity_track(track, velocity, last=2, size=16)
    assert np.allclose(out[0, :3], track[0, :3]) and np.allclose(out[0, 3:, 0], [[5, 8], [6, 10]])


def test_bouncing_balls_baselines_come_with_validation_batches() -> None:
    dm = BouncingBallsDataModule(n_train=32, n_val=8, n_test=8, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    base = batch["baselines"]
    assert set(base) == {"mean", "constant_velocity"} and set(base["constant_velocity"]) == {"video", "reward"}
    train_video = dm.dataset("train").tensors["video"]
    assert torch.allclose(base["mean"]["video"][0, 0], train_video.mean(dim=(0, 1)), atol=1e-6)
    # the constant-velocity video equals the data in the context frames and differs after
    cv = base["constant_velocity"]["video"]
    assert torch.allclose(cv[:, :4], batch["video"][:, :4], atol=1e-6)
    assert not torch.allclose(cv[:, 5:], batch["video"][:, 5:])
    assert "baselines" not in next(iter(dm.train_dataloader()))


def test_validation_logs_sample_and_baseline_metrics_per_frame() -> None:
    dm = BouncingBallsDataModule(n_train=16, n_val=8, n_test=8, batch_size=8, d_model=32)
    model = CanvasModule(dm.schema, dm.region_formats, backbone_config={"depth": 1, "n_heads": 2},
                         num_inference_steps=2, sample_metric_batches=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    for name in ("sample", "baseline/last", "baseline/mean", "baseline/constant_velocity"):
        assert f"val/{name}/video/mse" in metrics and f"val/{name}/video/ssim/frame_7" in metrics
    assert "val/sample/action/mse/frame_4" in metrics and "val/baseline/mean/reward/mse/frame_6" in metrics
    assert "val/sample/video/mse/frame_3" not in metrics  # context frames are not scored
    # the baseline numbers are what the data says
    batch = next(iter(dm.val_dataloader()))
    last = ((batch["video"][:, 3:4] - batch["video"][:, 4:]) ** 2).mean(dim=(0, 2, 3, 4))
    assert metrics["val/baseline/last/video/mse/frame_6"] == pytest.approx(float(last[2]), rel=1e-4)
    # validating again gives the same sampled numbers (own generator)
    again = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert again["val/sample/video/mse"] == pytest.approx(metrics["val/sample/video/mse"])
    # sampling for the metrics leaves the global RNG (hence training) alone
    state = torch.get_rng_state()
    model.update_future_metrics(batch, 0)
    assert torch.equal(state, torch.get_rng_state())


def test_sample_metrics_can_be_switched_off() -> None:
    dm = BouncingBallsDataModule(n_train=16, n_val=8, n_test=8, batch_size=8, d_model=32)
    model = CanvasModule(dm.schema, dm.region_formats, backbone_config={"depth": 1, "n_heads": 2}, sample_metrics=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert not any("/sample/" in k or "/baseline/" in k for k in metrics)


def test_bouncing_balls_video_attention_and_action_weight_shape_the_canvas() -> None:
    from canvas_engineering import CanvasValidationError

    dm = BouncingBallsDataModule(video_attention="local_attention", action_loss_weight=4.0)
    fns = {(c.src, c.dst): c.fn for c in dm.schema.topology.connections}
    assert fns[("video", "video")] == "local_attention" and fns[("action", "video")] is None
    assert dm.schema.layout.region_spec("action").loss_weight == 4.0
    with pytest.raises(CanvasValidationError, match="action_loss_weight"):
        BouncingBallsDataModule(action_loss_weight=float("inf"))
    with pytest.raises(CanvasValidationError, match="no_such_attention"):
        BouncingBallsDataModule(video_attention="no_such_attention")


def test_future_metrics_table_lists_sample_first_then_baselines() -> None:
    from canvas_engineering.training.future_metrics import future_metrics_table

    table = future_metrics_table({
        "val/sample/video/mse/frame_4": 0.01, "val/baseline/last/video/mse/frame_4": 0.02,
        "val/baseline/mean/video/mse/frame_4": 0.03, "val/sample/video/mse": 0.01, "train/loss": 1.0,
    })
    lines = table.splitlines()
    assert lines[0] == "video mse (lower is better)" and "t=4" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["sample", "last", "mean"]
    assert future_metrics_table({"val/loss": 0.1}) == ""
