"""The `canvas-engineering` command: LightningCLI fit from a config file, and its logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from canvas_engineering.cli.commands import main
from canvas_engineering.cli.lightning_cli import QUICKSTART_CONFIG


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "canvas_engineering", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def _tiny_config(tmp_path: Path) -> Path:
    config = yaml.safe_load(Path(QUICKSTART_CONFIG).read_text())
    config["trainer"].update(max_steps=6, log_every_n_steps=1, check_val_every_n_epoch=1, limit_val_batches=1,
                             enable_progress_bar=False, default_root_dir=str(tmp_path / "runs"))
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("LoopCheckpoint"):
            cb["init_args"].update(every_n_steps=3)
        if cb["class_path"].endswith("CanvasPictures"):
            cb["init_args"].update(every_n_epochs=1, num_inference_steps=2)
    config["model"]["backbone_config"] = {"depth": 1, "n_heads": 2}
    config["data"]["init_args"].update(n_train=12, n_val=4, n_test=4, batch_size=2)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_fit_from_a_config_file_writes_scalars_pictures_and_checkpoints(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = _cli(["fit", "--config", str(_tiny_config(tmp_path))], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "bouncing_balls" / "version_0"  # <default_root_dir>/<datamodule>/version_N
    events = list(run.glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    assert {"train/loss", "val/loss", "val/video/loss", "val/action/loss", "val/reward/loss", "loops/active"} <= scalars
    assert {"canvas/layout", "canvas/attention_mask", "predictions/video", "predictions/action"} <= images
    # the sampled future and its baselines, per region and frame, in the TensorBoard event file
    assert {"val/sample/video/mse", "val/sample/video/ssim/frame_7", "val/sample/action/mse/frame_4",
            "val/baseline/last/video/mse/frame_4", "val/baseline/mean/reward/mse",
            "val/baseline/constant_velocity/video/ssim/frame_6"} <= scalars
    # the run ends with the sampled future against the baselines and where the outputs are
    assert "Sampled future (CanvasModule.sample) against baselines" in proc.stdout
    assert "constant_velocity" in proc.stdout and "tensorboard --logdir" in proc.stdout
    assert str(run / "checkpoints") in proc.stdout and f"tensorboard --logdir {tmp_path / 'runs'}" in proc.stdout
    loops = sorted(p.name for p in (run / "loops").iterdir())
    assert loops == ["loops-last.pt", "loops-step3.pt", "loops-step6.pt"]
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
    assert (run / "pictures" / "predictions_video.png").stat().st_size > 1000
    # hp_metric is the validation loss (not Lightning's placeholder -1)
    hp, val = acc.Scalars("hp_metric"), acc.Scalars("val/loss")
    assert hp[-1].value == pytest.approx(val[-1].value) and hp[-1].value > 0


@pytest.mark.slow
def test_cli_flags_override_the_packaged_quick_start(tmp_path: Path) -> None:
    proc = _cli(["fit", "--print_config", "--trainer.max_steps=20", "--model.max_loops=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load(proc.stdout)
    assert config["trainer"]["max_steps"] == 20 and config["model"]["max_loops"] == 2
    assert config["data"]["class_path"].endswith("BouncingBallsDataModule")


def test_bad_flag_is_reported_by_name(tmp_path: Path) -> None:
    proc = _cli(["fit", "--model.max_loops=zero"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --model.max_loops: Expected a int. Got value: zero")
    assert len(proc.stderr.strip().splitlines()) <= 2  # the message and the --traceback hint, no traceback


def test_plugins_json_lists_every_kind(capsys) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    kinds = {(r["name"], r["kind"]) for r in rows}
    expected = {("cross_attention", "attention type"), ("canvas_dit", "backbone"), ("bouncing_balls", "datamodule")}
    assert expected <= kinds
    assert all(r["distribution"] and r["version"] for r in rows)


def test_schema_command_summarises_and_draws(tmp_path: Path, capsys) -> None:
    from canvas_engineering.typed.presets import robot_manipulation_schema

    robot_manipulation_schema().to_json(tmp_path / "robot.json")
    assert main(["schema", str(tmp_path / "robot.json"), "--png", str(tmp_path / "out" / "robot")]) == 0
    assert "320 positions" in capsys.readouterr().out
    assert (tmp_path / "out" / "robot_layout.png").stat().st_size > 1000
    assert (tmp_path / "out" / "robot_mask.png").stat().st_size > 1000
    (tmp_path / "bad.json").write_text('{"layout": {"T": 2}}')
    assert main(["schema", str(tmp_path / "bad.json")]) == 2
    assert "missing key 'layout.regions'" in capsys.readouterr().err
