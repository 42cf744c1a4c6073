"""save_pretrained / from_pretrained: safetensors + config + model card, exact outputs, damage refused."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from canvas_fixtures import FORMATS, NO_VAL_DATA, tiny_batch, tiny_loader, tiny_schema
from safetensors.torch import load_file, save_file

from canvas_engineering import CanvasModule, CheckpointFileError

pytestmark = NO_VAL_DATA


def trained(**kwargs) -> CanvasModule:
    torch.manual_seed(0)
    kwargs.setdefault("backbone_config", {"depth": 1, "n_heads": 2})
    m = CanvasModule(tiny_schema(), FORMATS, **kwargs)
    pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, max_steps=2).fit(m, tiny_loader())
    with torch.no_grad():  # move off the zero-initialised output layer so outputs depend on every weight
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def outputs(m: CanvasModule) -> dict[str, torch.Tensor]:
    return m.eval().sample(tiny_batch(2, seed=3), num_inference_steps=2, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = trained(max_loops=3, normalization={"reward": {"mean": [0.5], "std": [2.0]}})
    m.set_loops(2)
    m.set_betas([1.0, 1.5, 0.5])
    folder = tmp_path_factory.mktemp("pretrained") / "model"
    m.save_pretrained(folder, metrics={"val/loss": 0.125}, data_description="tiny random clips")
    return m, folder


def test_loaded_model_gives_the_same_outputs_bit_for_bit(saved) -> None:
    m, folder = saved
    loaded = CanvasModule.from_pretrained(folder)
    assert not loaded.training
    block = loaded.backbone.looped_blocks[0]
    assert block.current_loops == 2 and block.betas == [1.0, 1.5, 0.5]
    assert loaded.normalization == m.normalization
    a, b = outputs(m), outputs(loaded)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_folder_holds_safetensors_config_and_model_card(saved) -> None:
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "canvas-engineering-pretrained" and config["format_version"] == 1
    assert config["loops"] == 2 and config["betas"] == [1.0, 1.5, 0.5]
    assert config["hparams"]["schema"] == tiny_schema().to_dict()
    assert config["hparams"]["normalization"]["reward"]["std"] == [2.0]
    assert "canvas_engineering_version" in config
    card = (folder / "README.md").read_text()
    assert "library_name: canvas-engineering" in card
    assert "| `video` |" in card and "| `action` |" in card
    assert "tiny random clips" in card and "| val/loss | 0.125 |" in card


def test_plain_state_dict_round_trip_keeps_loops_and_betas() -> None:
    m = trained(max_loops=3)
    m.set_loops(2)
    m.set_betas([1.0, 2.0, 0.5])
    fresh = CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2}, max_loops=3)
    fresh.load_state_dict(m.state_dict())
    block = fresh.backbone.looped_blocks[0]
    assert block.current_loops == 2 and block.betas == [1.0, 2.0, 0.5]
    a, b = outputs(m), outputs(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_loops_can_be_edited_before_loading(saved, tmp_path) -> None:
    _, folder = saved
    copy = tmp_path / "m"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["loops"] = 3
    (copy / "config.json").write_text(json.dumps(config))
    assert CanvasModule.from_pretrained(copy).backbone.looped_blocks[0].current_loops == 3


def _copy(folder, tmp_path):
    copy = tmp_path / "m"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    return copy


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 200, len(data) - 136):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _nan(path) -> None:
    tensors = load_file(path)
    name = next(k for k in sorted(tensors) if k.endswith(".weight"))
    tensors[name][0] = float("nan")
    from canvas_engineering.training.pretrained import _digest

    save_file(tensors, path, metadata={"format": "pt", "sha256": _digest(tensors)})


def _extra_tensor(path) -> None:
    tensors = load_file(path)
    tensors["stray.weight"] = torch.zeros(2)
    from canvas_engineering.training.pretrained import _digest

    save_file(tensors, path, metadata={"format": "pt", "sha256": _digest(tensors)})


def _loop_state(value):
    def apply(path) -> None:
        from canvas_engineering.training.pretrained import _digest

        tensors = load_file(path)
        name = next(k for k in tensors if k.endswith("_extra_state"))
        tensors[name][0] = value
        save_file(tensors, path, metadata={"format": "pt", "sha256": _digest(tensors)})

    return apply


def _config(change):
    def apply(path) -> None:
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))

    return apply


@pytest.mark.parametrize(
    ("name", "damage", "pattern"),
    [
        ("model.safetensors", _flip, "damaged|cannot read"),
        ("model.safetensors", _truncate, "cannot read the weights"),
        ("model.safetensors", lambda p: p.write_bytes(b"\x00" * 3), "cannot read the weights"),
        ("model.safetensors", _nan, "non-finite"),
        ("model.safetensors", _extra_tensor, "stray.weight"),
        ("model.safetensors", _loop_state(2.5), "loop state"),
        ("model.safetensors", lambda p: p.unlink(), "cannot read the weights"),
        ("config.json", lambda p: p.unlink(), "config.json: missing"),
        ("config.json", lambda p: p.write_text("{"), "cannot read the config"),
        ("config.json", lambda p: p.write_bytes(b"\xff\xfe"), "cannot read the config"),
        ("config.json", _config(lambda c: c.update(format="diffusers")), "not a canvas-engineering-pretrained config"),
        ("config.json", _config(lambda c: c.update(lopps=2)), r"unknown key\(s\) \['lopps'\]"),
        ("config.json", _config(lambda c: c["hparams"].update(depthh=1)), "hparams do not build"),
        ("config.json", _config(lambda c: c.update(loops=7)), "loops/betas"),
        ("config.json", _config(lambda c: c.update(betas=[1.0, -1.0, 1.0])), "loops/betas"),
    ],
)
def test_damaged_or_foreign_folders_are_refused_naming_the_file(saved, tmp_path, name, damage, pattern) -> None:
    _, folder = saved
    copy = _copy(folder, tmp_path)
    damage(copy / name)
    with pytest.raises(CheckpointFileError, match=pattern) as info:
        CanvasModule.from_pretrained(copy)
    assert name in str(info.value) or "config.json" in str(info.value)


def test_non_finite_weights_load_only_when_asked(saved, tmp_path) -> None:
    _, folder = saved
    copy = _copy(folder, tmp_path)
    _nan(copy / "model.safetensors")
    loaded = CanvasModule.from_pretrained(copy, allow_non_finite=True)
    assert any(not torch.isfinite(p).all() for p in loaded.parameters())


def test_not_a_folder_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointFileError, match="is not a folder"):
        CanvasModule.from_pretrained(tmp_path / "nothing_here")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointFileError, match="not a folder"):
        trained().save_pretrained(tmp_path / "file")


def test_saving_over_a_folder_replaces_it_whole(saved, tmp_path) -> None:
    m, folder = saved
    copy = _copy(folder, tmp_path)
    other = trained(max_loops=3)
    other.save_pretrained(copy)
    loaded = CanvasModule.from_pretrained(copy)
    assert loaded.backbone.looped_blocks[0].current_loops == other.backbone.looped_blocks[0].current_loops
    assert not list(copy.glob("*.tmp*"))


def test_a_repository_id_goes_to_the_hub_and_failures_are_named(saved, monkeypatch) -> None:
    import huggingface_hub

    _, folder = saved
    asked = []

    def snapshot(repo_id, **kwargs):
        asked.append(repo_id)
        if repo_id == "someone/model":
            return str(folder)
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert CanvasModule.from_pretrained("someone/model").backbone.looped_blocks[0].current_loops == 2
    with pytest.raises(CheckpointFileError, match="someone/missing is neither a local folder nor a reachable Hub"):
        CanvasModule.from_pretrained("someone/missing")
    assert asked == ["someone/model", "someone/missing"]
