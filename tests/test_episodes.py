"""EpisodeDataModule: LeRobot folders (v2.1, v3.0; video and image storage), arrays and HF datasets in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from canvas_engineering.datamodules import EpisodeDataModule, write_lerobot_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_engineering.errors import CanvasValidationError, EpisodeDataError

FPS = 10


def _episodes(n: int = 6, frames: int = 12, side: int = 16, seed: int = 0, video: bool = True) -> list[dict]:
    """Episodes whose values say where they come from: state = 100 * episode + frame; frames are flat grey."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        k = frames + e % 3  # different lengths
        state = np.stack([100.0 * e + np.arange(k), rng.normal(size=k)], axis=1).astype(np.float32)
        ep = {"observation.state": state, "action": rng.normal(size=(k, 2)).astype(np.float32)}
        if video:
            grey = (np.arange(k) * 17 + e * 5) % 200 + 20
            ep["observation.images.top"] = np.broadcast_to(grey[:, None, None, None], (k, side, side, 3)).astype(
                np.uint8
            )
        out.append(ep)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lerobot")
    eps = _episodes()
    return {
        "v2.1": write_lerobot_dataset(base / "v21", eps, FPS, version="v2.1"),
        "v3.0": write_lerobot_dataset(base / "v30", eps, FPS, version="v3.0", episodes_per_file=4),
        "images": write_lerobot_dataset(base / "img", eps, FPS, version="v3.0", image_storage="image"),
    }


def _check_windows_come_from_the_data(dm: EpisodeDataModule, split: str = "train") -> None:
    ds = dm.dataset(split)
    eps = _episodes()
    for i in range(len(ds)):
        item, e, s = ds[i], int(ds.episodes[i]), int(ds.starts[i])
        window = dm.history + dm.horizon
        # no window crosses an episode boundary: every state value is this episode's, consecutive
        np.testing.assert_allclose(item["observation.state"][:, 0].numpy(), 100.0 * e + np.arange(s, s + window))
        np.testing.assert_allclose(item["action"].numpy(), eps[e]["action"][s : s + window], rtol=1e-6)
        top = item["observation.images.top"]
        grey = eps[e]["observation.images.top"][s : s + window, 0, 0, 0] / 255.0
        np.testing.assert_allclose(top.mean(dim=(1, 2, 3)).numpy(), grey, atol=4 / 255)


@pytest.mark.parametrize("layout", ["v2.1", "v3.0", "images"])
def test_lerobot_folders_give_the_recorded_windows(folders: dict[str, Path], layout: str) -> None:
    dm = EpisodeDataModule(root=str(folders[layout]), history=3, horizon=2, normalize=False, batch_size=4)
    assert dm.schema.layout.t_current == 3
    formats = dm.region_formats
    assert formats["observation.images.top"]["kind"] == "patches"
    assert formats["action"]["kind"] == "action" and formats["observation.state"]["kind"] == "vector"
    dm.setup("fit")
    _check_windows_come_from_the_data(dm)
    batch = next(iter(dm.train_dataloader()))
    assert batch["observation.images.top"].shape == (4, 5, 3, 16, 16)
    assert batch["observation.state"].dtype == torch.float32


def test_normalisation_from_stats_json_and_stored_for_the_model(folders: dict[str, Path]) -> None:
    dm = EpisodeDataModule(root=str(folders["v3.0"]), history=3, horizon=2)
    stats = json.loads((folders["v3.0"] / "meta" / "stats.json").read_text())
    norm = dm.normalization
    np.testing.assert_allclose(norm["observation.state"]["mean"], stats["observation.state"]["mean"])
    raw = EpisodeDataModule(root=str(folders["v3.0"]), history=3, horizon=2, normalize=False)
    x, y = dm.dataset("train")[0]["observation.state"], raw.dataset("train")[0]["observation.state"]
    mean, std = torch.tensor(norm["observation.state"]["mean"]), torch.tensor(norm["observation.state"]["std"])
    torch.testing.assert_close(x * std + mean, y, rtol=1e-5, atol=1e-4)  # inference can undo it
    images = dm.dataset("train")[0]["observation.images.top"]
    assert images.shape == (5, 3, 16, 16) and abs(float(images.mean())) < 3


def test_statistics_computed_from_training_episodes_and_cached(tmp_path: Path, monkeypatch) -> None:
    root = write_lerobot_dataset(tmp_path / "d", _episodes(), FPS, write_stats=False)
    dm = EpisodeDataModule(root=str(root), history=3, horizon=2, seed=1)
    norm = dm.normalization
    train = dm.split_episodes["train"]
    states = np.concatenate([_episodes()[e]["observation.state"] for e in train])
    np.testing.assert_allclose(norm["observation.state"]["mean"], states.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm["observation.state"]["std"], states.std(0), rtol=1e-4)
    cache = root / "meta" / "canvas_engineering_stats.json"
    assert cache.is_file()

    def refuse(self):  # noqa: ANN001, ANN202
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(EpisodeDataModule, "_compute_statistics", refuse)
    again = EpisodeDataModule(root=str(root), history=3, horizon=2, seed=1)
    assert again.normalization == norm


def test_from_arrays_multi_rate_canvas_and_describe() -> None:
    rng = np.random.default_rng(0)
    episodes = [
        {
            "camera": rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8),  # 10 Hz
            "joints": np.arange(50, dtype=np.float32)[:, None] + 1000 * e,  # 50 Hz
            "action": rng.normal(size=(50, 3)).astype(np.float32),  # 50 Hz
            "plan": np.arange(2, dtype=np.float32)[:, None] + 1000 * e,  # 2 Hz
        }
        for e in range(5)
    ]
    rates = {"camera": 10, "joints": 50, "action": 50, "plan": 2}
    dm = EpisodeDataModule.from_arrays(
        episodes, rates, history=15, horizon=10, context=["plan"], loss_weights={"action": 2.0}, normalize=False
    )
    layout = dm.schema.layout
    assert {n: layout.region_spec(n).period for n in rates} == {"camera": 5, "joints": 1, "action": 1, "plan": 25}
    assert layout.region_size("camera") == (5, 2, 2) and layout.region_size("plan")[0] == 1
    assert layout.region_spec("plan").is_output is False and layout.region_spec("action").loss_weight == 2.0
    assert dm.stride == 25  # slow streams stay aligned
    text = dm.describe()
    for expected in ("camera", "period", "context", "output (weight 2)", "25"):
        assert expected in text
    item = dm.dataset("train")[0]
    e, s = int(dm.dataset("train").episodes[0]), int(dm.dataset("train").starts[0])
    np.testing.assert_allclose(item["joints"][:, 0].numpy(), 1000 * e + np.arange(s, s + 25))
    np.testing.assert_allclose(item["plan"][:, 0].numpy(), [1000 * e + s // 25])
    camera = episodes[e]["camera"][s // 5 : s // 5 + 5].transpose(0, 3, 1, 2) / 255
    np.testing.assert_allclose(item["camera"].numpy(), camera, rtol=1e-6)


def test_lower_rates_subsample_a_lerobot_stream(folders: dict[str, Path]) -> None:
    dm = EpisodeDataModule(root=str(folders["v3.0"]), history=4, horizon=2, rates={"observation.images.top": 5},
                           normalize=False)
    assert dm.schema.layout.region_spec("observation.images.top").period == 2
    ds = dm.dataset("train")
    item, e, s = ds[0], int(ds.episodes[0]), int(ds.starts[0])
    grey = _episodes()[e]["observation.images.top"][s : s + 6 : 2, 0, 0, 0] / 255.0
    np.testing.assert_allclose(item["observation.images.top"].mean(dim=(1, 2, 3)).numpy(), grey, atol=4 / 255)


def test_short_episodes_are_skipped_and_counted() -> None:
    episodes = [{"x": np.arange(k, dtype=np.float32)} for k in (3, 20, 20, 20, 20, 4)]
    dm = EpisodeDataModule.from_arrays(episodes, {"x": 10}, history=4, horizon=2, val_fraction=0.2,
                                       test_fraction=0.2, normalize=False)
    assert sum(dm.skipped.values()) == 2
    assert "skipped" in dm.describe()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 40))
def test_split_is_by_episode_and_deterministic(seed: int, n: int) -> None:
    episodes = [{"x": np.full(8, e, dtype=np.float32)} for e in range(n)]
    a = EpisodeDataModule.from_arrays(episodes, {"x": 1}, history=2, horizon=1, seed=seed, normalize=False)
    b = EpisodeDataModule.from_arrays(episodes, {"x": 1}, history=2, horizon=1, seed=seed, normalize=False)
    splits = a.split_episodes
    assert all(np.array_equal(splits[k], b.split_episodes[k]) for k in splits)
    union = np.concatenate(list(splits.values()))
    assert sorted(union.tolist()) == list(range(n))  # disjoint and complete
    assert len(splits["val"]) >= 1 and len(splits["test"]) >= 1
    for split in splits:
        episodes_of_windows, _ = a.windows[split]
        assert set(episodes_of_windows.tolist()) <= set(splits[split].tolist())


def test_from_hf_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"episode_index": [], "observation.state": [], "action": [], "task": []}
    for e in range(5):
        for f in range(10):
            rows["episode_index"].append(e)
            rows["observation.state"].append([100.0 * e + f, 0.5])
            rows["action"].append([float(f)])
            rows["task"].append("push")
    ds = datasets.Dataset.from_dict(rows)
    dm = EpisodeDataModule.from_hf_dataset(ds, fps=10, history=3, horizon=1, normalize=False)
    assert set(dm.schema.layout.regions) == {"observation.state", "action"}  # text is not a stream
    w = dm.dataset("train")
    e, s = int(w.episodes[0]), int(w.starts[0])
    np.testing.assert_allclose(w[0]["observation.state"][:, 0].numpy(), 100.0 * e + np.arange(s, s + 4))


def test_workers_give_the_same_batches(folders: dict[str, Path]) -> None:
    a = EpisodeDataModule(root=str(folders["v3.0"]), history=3, horizon=2, batch_size=4)
    b = EpisodeDataModule(root=str(folders["v3.0"]), history=3, horizon=2, batch_size=4, num_workers=2)
    for x, y in zip(a.val_dataloader(), b.val_dataloader(), strict=True):
        for key in ("observation.state", "observation.images.top"):
            torch.testing.assert_close(x[key], y[key])


def _peak_bytes(root: Path) -> int:
    tracemalloc.start()
    dm = EpisodeDataModule(root=str(root), history=3, horizon=1, batch_size=8)
    for i, batch in enumerate(dm.train_dataloader()):
        assert torch.isfinite(batch["observation.state"]).all()
        if i == 20:
            break
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_episodes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def episodes(n: int) -> list[dict]:
        return [{"observation.state": rng.normal(size=(8, 64)).astype(np.float32),
                 "action": rng.normal(size=(8, 4)).astype(np.float32)} for _ in range(n)]

    small = write_lerobot_dataset(tmp_path / "small", episodes(100), FPS, episodes_per_file=100)
    large = write_lerobot_dataset(tmp_path / "large", episodes(1000), FPS, episodes_per_file=100)
    data_bytes = sum(f.stat().st_size for f in (tmp_path / "large" / "data").rglob("*.parquet"))
    p_small, p_large = _peak_bytes(small), _peak_bytes(large)
    # 10x the episodes: the peak grows by the per-episode index only, far less than the data
    assert p_large < p_small + data_bytes / 2, (p_small, p_large, data_bytes)


# -- bad data --------------------------------------------------------------------------------


def test_missing_or_malformed_info_json(tmp_path: Path) -> None:
    with pytest.raises(EpisodeDataError, match="meta/info.json"):
        EpisodeDataModule(root=str(tmp_path))
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{not json")
    with pytest.raises(EpisodeDataError, match="malformed JSON"):
        EpisodeDataModule(root=str(tmp_path))
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": -1, "features": {}}))
    with pytest.raises(EpisodeDataError, match="fps"):
        EpisodeDataModule(root=str(tmp_path))
    with pytest.raises(EpisodeDataError, match="not a folder"):
        EpisodeDataModule(root=str(tmp_path / "nope"))


def _edit_info(root: Path, edit) -> None:  # noqa: ANN001
    info = json.loads((root / "meta" / "info.json").read_text())
    edit(info)
    (root / "meta" / "info.json").write_text(json.dumps(info))


def test_feature_declared_but_absent_from_the_files(tmp_path: Path) -> None:
    root = write_lerobot_dataset(tmp_path / "d", _episodes(video=False), FPS)
    _edit_info(root, lambda info: info["features"].update({"observation.effort": {"dtype": "float32", "shape": [3]}}))
    with pytest.raises(EpisodeDataError, match=r"file-000.parquet.*observation.effort") as err:
        EpisodeDataModule(root=str(root))
    assert err.value.feature == "observation.effort"


def test_video_shorter_than_its_table(tmp_path: Path) -> None:
    eps = _episodes(n=4)
    root = write_lerobot_dataset(tmp_path / "d", eps, FPS, version="v2.1")
    short = [dict(ep) for ep in eps]
    short[2]["observation.images.top"] = short[2]["observation.images.top"][:5]
    from canvas_engineering.datamodules.lerobot_writer import _write_video

    video = root / "videos" / "chunk-000" / "observation.images.top" / "episode_000002.mp4"
    _write_video(video, short[2]["observation.images.top"], FPS)
    with pytest.raises(EpisodeDataError, match=r"episode_000002.mp4: video shorter than its table.*episode 2") as err:
        EpisodeDataModule(root=str(root), history=3, horizon=2, val_fraction=0.25, test_fraction=0.25)
    assert err.value.episode == 2 and err.value.feature == "observation.images.top"


def test_non_finite_values_are_named(tmp_path: Path) -> None:
    eps = _episodes(video=False)
    eps[3]["action"][4, 1] = np.nan
    root = write_lerobot_dataset(tmp_path / "d", eps, FPS, write_stats=False)
    with pytest.raises(EpisodeDataError, match=r"episode 3, feature 'action': non-finite value at frame 4"):
        EpisodeDataModule(root=str(root))
    with pytest.raises(EpisodeDataError, match=r"episode 3, feature 'action': non-finite"):
        EpisodeDataModule.from_arrays(eps, {"observation.state": 10, "action": 10})


def test_timestamps_off_the_frame_rate(tmp_path: Path) -> None:
    root = write_lerobot_dataset(tmp_path / "d", _episodes(video=False), FPS)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    stamps = table.column("timestamp").to_numpy().copy()
    stamps[15] += 0.05
    pq.write_table(table.set_column(table.schema.get_field_index("timestamp"), "timestamp", pa.array(stamps)), path)
    with pytest.raises(EpisodeDataError, match=r"file-000.parquet: episode 1, frame 3: timestamp") as err:
        EpisodeDataModule(root=str(root))
    assert err.value.feature == "timestamp"


def test_bad_arguments_are_named(folders: dict[str, Path]) -> None:
    root = str(folders["v3.0"])
    with pytest.raises(CanvasValidationError, match="history"):
        EpisodeDataModule(root=root, history=0)
    with pytest.raises(CanvasValidationError, match="rates.*not a feature"):
        EpisodeDataModule(root=root, rates={"camera": 5})
    with pytest.raises(CanvasValidationError, match="must divide the stored rate"):
        EpisodeDataModule(root=root, rates={"action": 3})
    with pytest.raises(CanvasValidationError, match="patch_size"):
        EpisodeDataModule(root=root, patch_size=5)
    with pytest.raises(CanvasValidationError, match="context.*not a feature"):
        EpisodeDataModule(root=root, context=["nope"])
    with pytest.raises(EpisodeDataError, match="cannot be split"):
        EpisodeDataModule.from_arrays([{"x": np.zeros(9)}] * 2, {"x": 1})
    with pytest.raises(EpisodeDataError, match="rates"):
        EpisodeDataModule.from_arrays([{"x": np.zeros(9)}] * 4, {"x": float("nan")})


# -- CLI -------------------------------------------------------------------------------------


def test_cli_fits_on_a_lerobot_folder_by_its_plugin_name(folders: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, "-m", "canvas_engineering", "fit", "--data=episodes", f"--data.root={folders['v3.0']}",
            "--data.batch_size=4", "--data.history=3", "--data.horizon=2", "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Finished at step 2" in out.stdout


def test_datamodule_plugin_names_resolve_to_classes() -> None:
    from canvas_engineering.cli.lightning_cli import resolve_datamodule_names
    from canvas_engineering.plugin_host.host import get_registry

    out = resolve_datamodule_names(["fit", "--data=cartpole", "--data", "episodes", "--data.root=x"], get_registry())
    assert out == ["fit", "--data=canvas_engineering.datamodules.cartpole.CartPoleDataModule", "--data",
                   "canvas_engineering.datamodules.episodes.EpisodeDataModule", "--data.root=x"]


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_shards(folders: dict[str, Path], tmp_path: Path) -> None:
    script = Path(__file__).parent / "episodes_ddp_fit.py"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, str(script), str(folders["v3.0"]), str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    firsts = [set(r["firsts"]) for r in ranks]
    # each rank its own windows (DistributedSampler repeats at most world_size - 1 to even the shards)
    assert firsts[0] and firsts[1] and len(firsts[0] & firsts[1]) <= 1
    dm = EpisodeDataModule(root=str(folders["v3.0"]), history=3, horizon=2, normalize=False)
    episodes, starts = dm.windows["train"]
    assert firsts[0] | firsts[1] == set((100.0 * episodes + starts).tolist())  # together: every training window


def test_the_model_keeps_the_normalisation_and_undoes_it(folders: dict[str, Path], tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from canvas_engineering import CanvasModule

    dm = EpisodeDataModule(root=str(folders["v3.0"]), history=3, horizon=2, batch_size=4, d_model=32)
    model = CanvasModule(dm.schema, dm.region_formats, backbone_config={"depth": 1, "n_heads": 2},
                         normalization=dm.normalization)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = CanvasModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.normalization == dm.normalization
    raw = EpisodeDataModule(root=str(folders["v3.0"]), history=3, horizon=2, normalize=False).dataset("train")[0]
    back = loaded.denormalize({k: v[None] for k, v in dm.dataset("train")[0].items()})
    for region in ("observation.state", "observation.images.top"):
        torch.testing.assert_close(back[region][0], raw[region], rtol=1e-4, atol=1e-4)
    with pytest.raises(CanvasValidationError, match=r"normalization\['action'\]\['std'\] must be 2 finite"):
        CanvasModule(dm.schema, dm.region_formats, normalization={"action": {"mean": [0, 0], "std": [1]}})
    with pytest.raises(CanvasValidationError, match="not a fed region"):
        CanvasModule(dm.schema, dm.region_formats, normalization={"camera": {"mean": [0], "std": [1]}})
