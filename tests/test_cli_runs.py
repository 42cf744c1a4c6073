"""The newcomer's path through `canvas-engineering`: one-line errors, --help, run folders, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lightning")

from canvas_engineering.cli.commands import LIGHTNING_COMMANDS, TOOLS, main  # noqa: E402
from canvas_engineering.errors import UnknownPluginError  # noqa: E402

TINY = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1",
        "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--model.backbone_config.depth=1",
        "--data.n_train=4", "--data.n_val=2", "--data.n_test=3", "--data.batch_size=2"]


def _error(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_help_lists_every_command_with_one_line(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("  -")]
    assert listed == [*LIGHTNING_COMMANDS, *TOOLS]
    assert {"demo", "schema", "plugins", "rollout"} <= set(listed) and "--traceback" in out
    assert main([]) == 2 and "rollout" in capsys.readouterr().err  # no command: the same list, on stderr
    assert main(["--version"]) == 0
    from canvas_engineering import __version__

    assert capsys.readouterr().out.strip() == f"canvas-engineering {__version__}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fitt"], "unknown command 'fitt' (did you mean fit?)"),
        (["fit", "--trainer.max_step=20"], "unknown option --trainer.max_step (did you mean --trainer.max_steps"),
        (["fit", "--model.max_loops=zero"], "--model.max_loops: Expected a int. Got value: zero"),
        (["fit", "--data=no_such_data"], "unknown datamodule 'no_such_data'; available: bouncing_balls, cartpole,"),
        (["fit", "--model.backbone=no_such_backbone", "--data.n_train=2"],
         "unknown backbone 'no_such_backbone'; available: canvas_dit, cogvideox"),
        (["fit", "--data=video_folder", "--data.root=EMPTY"], "VideoFolderDataModule.root="),
        (["validate"], "give --config, or --ckpt_path of a run"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in args]
    assert main([*args, f"--trainer.default_root_dir={tmp_path}"] if args[0] != "fitt" else args) == 2
    lines = _error(capsys)
    assert len(lines) <= 2 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not list(tmp_path.rglob("version_*"))  # nothing was started


def test_traceback_flag_and_environment_variable_show_the_exception(monkeypatch) -> None:
    with pytest.raises(UnknownPluginError, match="no_such_data"):
        main(["fit", "--data=no_such_data", "--traceback"])
    monkeypatch.setenv("CANVAS_ENGINEERING_TRACEBACK", "1")
    with pytest.raises(UnknownPluginError):
        main(["fit", "--data=no_such_data"])


def test_a_switched_datamodule_starts_from_its_own_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--data=multi_frequency", "--print_config"])
    assert exit_.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    from canvas_engineering.datamodules.multi_frequency import MultiFrequencyDataModule

    assert config["data"]["class_path"].endswith("MultiFrequencyDataModule")
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(MultiFrequencyDataModule).parameters.items()}
    assert {k: v for k, v in config["data"]["init_args"].items() if k in defaults} == {
        k: v for k, v in defaults.items() if k in config["data"]["init_args"]
    }
    assert config["trainer"]["max_steps"] == 768 and config["model"]["lr_decay"] == "cosine"  # the rest: quick start


@pytest.mark.slow
def test_two_fits_two_folders_then_validate_and_predict_from_a_checkpoint_alone(tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    root = tmp_path / "runs"
    for _ in range(2):
        assert main(["fit", *TINY, f"--trainer.default_root_dir={root}"]) == 0
    out = capsys.readouterr().out
    runs = root / "bouncing_balls"
    for version in ("version_0", "version_1"):  # every output of a run in its own folder
        run = runs / version
        assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "loops" / "loops-last.pt").is_file()
        assert (run / "pictures" / "layout.png").is_file() and (run / "pictures" / "attention_mask.png").is_file()
    assert f"run folder (TensorBoard events, config.yaml): {runs / 'version_1'}" in out
    assert f"tensorboard --logdir {root}" in out and "hp_metric (TensorBoard HPARAMS) = val/loss = " in out

    ckpt = runs / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["validate", f"--ckpt_path={ckpt}"]) == 0  # no --config: the run's config.yaml
    out = capsys.readouterr().out
    assert "Finished at step 0 (validate)." in out and "val/loss=" in out
    assert (runs / "version_2" / "config.yaml").is_file()

    assert main(["predict", "--ckpt_path", str(ckpt)]) == 0
    folder = runs / "version_3" / "predictions"
    assert f"predictions (CanvasPredictionWriter): {folder} (2 files" in capsys.readouterr().out
    index = json.loads((folder / "predictions.json").read_text())
    assert [f["indices"] for f in index["files"]] == [[0, 1], [2]]  # 3 test clips, batches of 2
    from canvas_engineering.datamodules import BouncingBallsDataModule

    data = BouncingBallsDataModule(n_train=4, n_val=2, n_test=3, batch_size=2)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    first = load_file(folder / index["files"][0]["file"])
    assert set(first) == {"video", "action", "reward"}
    for name, value in first.items():
        assert value.shape == batch[name].shape and torch.isfinite(value).all()
        t_current = data.schema.layout.t_current
        assert torch.equal(value[:, :t_current], batch[name][:, :t_current].to(value.dtype))  # context: the data
