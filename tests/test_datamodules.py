"""The canvas datamodules: argument validation, batch contract, determinism, registration, real fits."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from canvas_engineering.datamodules import (
    BouncingBallsDataModule,
    CanvasDataModule,
    CartPoleDataModule,
    MultiFrequencyDataModule,
    TensorDictDataset,
    VideoFolderDataModule,
    VideoFolderError,
)

from canvas_engineering import CanvasModule, CanvasValidationError, get_registry
from canvas_engineering.models.region_codecs import RegionFormat, expected_shape
from canvas_engineering.plugin_host.host import KindRegistry

av = pytest.importorskip("av")
pytest.importorskip("gymnasium")

TINY = {"n_train": 12, "n_val": 4, "n_test": 4, "batch_size": 4, "d_model": 32}


# -- fixtures ---------------------------------------------------------------------------------


def _write_video(path: Path, n_frames: int = 12, side: int = 32, codec: str = "mpeg4") -> Path:
    """Write a tiny video of a bright bar moving right (x = 2 * frame), written with PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        for i in range(n_frames):
            img = np.zeros((side, side, 3), np.uint8)
            img[:, 2 * i : 2 * i + 6] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Make a folder with one 12-frame 32x32 mp4 and a non-video file (ignored)."""
    folder = tmp_path_factory.mktemp("videos")
    try:
        _write_video(folder / "bar.mp4")
    except av.FFmpegError:  # pragma: no cover - depends on the FFmpeg build
        _write_video(folder / "bar.mp4", codec="libx264")
    (folder / "notes.txt").write_text("not a video")
    return folder


def _tiny(name: str, video_dir: Path | None = None, **overrides: object) -> CanvasDataModule:
    """Build a tiny instance of the named datamodule."""
    if name == "bouncing_balls":
        return BouncingBallsDataModule(**{**TINY, **overrides})
    if name == "multi_frequency":
        return MultiFrequencyDataModule(**{**TINY, "frames": 8, **overrides})
    if name == "multi_frequency_flat":
        return MultiFrequencyDataModule(**{**TINY, "frames": 8, "allocation": "flat", **overrides})
    if name == "cartpole":
        return CartPoleDataModule(**{**TINY, **overrides})
    if name == "video_folder":
        kwargs = {"frames": 4, "size": 16, "patch_size": 4, "clip_stride": 2, "batch_size": 2, "d_model": 32}
        return VideoFolderDataModule(str(video_dir), **{**kwargs, **overrides})
    if name == "video_folder_rgb":
        kwargs = {"frames": 4, "size": 16, "patch_size": 8, "channels": 3, "clip_stride": 2, "batch_size": 2}
        return VideoFolderDataModule(str(video_dir), **{**kwargs, "d_model": 32, **overrides})
    raise AssertionError(name)


ALL = ["bouncing_balls", "multi_frequency", "multi_frequency_flat", "cartpole", "video_folder", "video_folder_rgb"]


@pytest.fixture(params=ALL)
def dm(request: pytest.FixtureRequest, video_dir: Path) -> CanvasDataModule:
    return _tiny(request.param, video_dir)


def _all_batches(dm: CanvasDataModule) -> list[dict[str, torch.Tensor]]:
    dm.setup()
    loaders = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()]
    return [batch for loader in loaders for batch in loader]


# -- the batch contract ---------------------------------------------------------------------


def test_every_batch_matches_expected_shape(dm: CanvasDataModule) -> None:
    layout = dm.schema.layout
    formats = {name: RegionFormat(**fmt) for name, fmt in dm.region_formats.items()}
    assert set(formats) <= set(layout.regions)
    batches = _all_batches(dm)
    assert batches
    for batch in batches:
        # validation and test batches also carry baseline predictions (same shapes, per region)
        baselines = batch.pop("baselines", {})
        assert set(batch) == set(formats)
        for regions in baselines.values():
            assert all(tuple(regions[r].shape) == tuple(batch[r].shape) for r in regions)
        sizes = {x.shape[0] for x in batch.values()}
        assert len(sizes) == 1 and 1 <= sizes.pop() <= dm.batch_size
        for name, fmt in formats.items():
            x = batch[name]
            assert x.dtype == torch.float32, name
            assert tuple(x.shape[1:]) == expected_shape(fmt, layout, name), name
            assert torch.isfinite(x).all(), name


def test_same_seed_same_data_other_seed_other_data(dm: CanvasDataModule) -> None:
    again = type(dm)(**dm.hparams)
    first, second = _all_batches(dm), _all_batches(again)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    other = type(dm)(**{**dm.hparams, "seed": 1})
    other.setup()
    dm_train = torch.cat([b[k].flatten() for b in dm.train_dataloader() for k in sorted(b)])
    other_train = torch.cat([b[k].flatten() for b in other.train_dataloader() for k in sorted(b)])
    assert dm_train.shape != other_train.shape or not torch.equal(dm_train, other_train)


def test_describe_names_every_key_shape_and_region(dm: CanvasDataModule) -> None:
    text = dm.describe()
    for name, shape in dm.sample_shapes().items():
        assert name in text
        assert "(" + ", ".join(map(str, (dm.batch_size, *shape))) + ")" in text
    assert f"T={dm.schema.layout.T}" in text


def test_hyperparameters_and_schema_are_built_from_init_args(dm: CanvasDataModule) -> None:
    assert dm.hparams["batch_size"] == dm.batch_size
    assert dm.schema.layout.d_model == dm.hparams["d_model"]
    assert type(dm)(**dm.hparams).schema.to_dict() == dm.schema.to_dict()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("bouncing_balls", BouncingBallsDataModule),
        ("multi_frequency", MultiFrequencyDataModule),
        ("cartpole", CartPoleDataModule),
        ("video_folder", VideoFolderDataModule),
    ],
)
def test_registered_by_canvas_engineering(name: str, cls: type) -> None:
    entry = get_registry().datamodules[name]
    assert entry.obj is cls
    assert entry.distribution == "canvas-engineering"
    assert entry.source == "canvas_engineering.plugins.datamodules"


def test_datamodules_needing_missing_packages_are_not_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    from canvas_engineering.plugins import datamodules as plugin

    monkeypatch.setattr(plugin, "_installed", lambda package: package not in {"gymnasium", "av"})
    registry = KindRegistry("datamodule")
    plugin.register_datamodules(registry)
    assert registry.names() == ["bouncing_balls", "multi_frequency"]


def test_init_signatures_build_from_config() -> None:
    """Jsonargparse (LightningCLI) builds each datamodule from a config and checks Literal choices."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiFrequencyDataModule, "data")
    cfg = parser.parse_object({"data": {"allocation": "flat", "frames": 8, "n_train": 4}})
    built = parser.instantiate(cfg).data
    assert isinstance(built, MultiFrequencyDataModule) and built.allocation == "flat"
    with pytest.raises(Exception, match="allocation"):
        parser.parse_object({"data": {"allocation": "wide"}})
    for cls in (BouncingBallsDataModule, CartPoleDataModule, VideoFolderDataModule):
        ArgumentParser(exit_on_error=False).add_class_arguments(cls, "data")


# -- argument validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "needle"),
    [
        (BouncingBallsDataModule, {"batch_size": 0}, "batch_size=0"),
        (BouncingBallsDataModule, {"num_workers": -1}, "num_workers=-1"),
        (BouncingBallsDataModule, {"d_model": 0}, "d_model=0"),
        (BouncingBallsDataModule, {"frames": 1}, "frames=1"),
        (BouncingBallsDataModule, {"size": 18}, "size=18 must be a multiple of patch_size=4"),
        (BouncingBallsDataModule, {"size": 4}, "size=4"),
        (BouncingBallsDataModule, {"min_balls": 2, "max_balls": 1}, "max_balls=1"),
        (BouncingBallsDataModule, {"ball_sigma": 0.0}, "ball_sigma=0.0"),
        (BouncingBallsDataModule, {"damping": 1.5}, "damping=1.5"),
        (BouncingBallsDataModule, {"t_current": 9}, "t_current=9"),
        (BouncingBallsDataModule, {"topology": "ring"}, "topology='ring'"),
        (BouncingBallsDataModule, {"n_train": 0}, "n_train=0"),
        (BouncingBallsDataModule, {"frames": 2.5}, "frames=2.5"),
        (MultiFrequencyDataModule, {"frames": 10}, "frames=10 must be a multiple"),
        (MultiFrequencyDataModule, {"allocation": "wide"}, "allocation='wide'"),
        (MultiFrequencyDataModule, {"noise": -0.1}, "noise=-0.1"),
        (MultiFrequencyDataModule, {"coupling": math.nan}, "coupling=nan"),
        (MultiFrequencyDataModule, {"dim": 0}, "dim=0"),
        (CartPoleDataModule, {"random_action_prob": 1.5}, "random_action_prob=1.5"),
        (CartPoleDataModule, {"max_episode_steps": 4}, "max_episode_steps=4"),
        (CartPoleDataModule, {"reward_mode": "dense"}, "reward_mode='dense'"),
        (CartPoleDataModule, {"normalize": "yes"}, "normalize='yes'"),
    ],
)
def test_bad_arguments_are_named(cls: type, kwargs: dict, needle: str) -> None:
    with pytest.raises(CanvasValidationError, match=needle.replace("(", r"\(")) as info:
        cls(**kwargs)
    assert info.value.args[0].startswith(f"{cls.__name__}.")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"channels": 2}, "channels=2"),
        ({"size": 30, "patch_size": 8}, "size=30"),
        ({"val_fraction": 0.0}, "val_fraction=0.0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction=0.5 plus val_fraction=0.5"),
        ({"clip_stride": 0}, "clip_stride=0"),
        ({"split_by": "file"}, "split_by='file'"),
    ],
)
def test_video_folder_bad_arguments_are_named(video_dir: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(CanvasValidationError, match=needle):
        VideoFolderDataModule(str(video_dir), **kwargs)


def test_video_folder_errors_name_the_folder_or_file(tmp_path: Path, video_dir: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(VideoFolderError, match="nowhere.*is not an existing folder") as info:
        VideoFolderDataModule(str(missing))
    assert info.value.path == str(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no videos here")
    with pytest.raises(VideoFolderError, match="empty.*contains no video file"):
        VideoFolderDataModule(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    _write_video(broken / "a_good.mp4")
    (broken / "b_bad.mp4").write_bytes(b"not an mp4 at all" * 20)
    with pytest.raises(VideoFolderError, match="b_bad.mp4") as info:
        VideoFolderDataModule(str(broken))
    assert info.value.path.endswith("b_bad.mp4")
    few = VideoFolderDataModule(str(video_dir), frames=8)  # 12 frames -> one clip only
    with pytest.raises(VideoFolderError, match="gives 1 clips"):
        few.setup("fit")


# -- what each dataset holds ----------------------------------------------------------------------


def test_bouncing_balls_pushes_determine_the_motion() -> None:
    """With no friction, a single ball's acceleration is ``max_push * action`` (away from the walls)."""
    dm = BouncingBallsDataModule(
        frames=8,
        size=32,
        patch_size=4,
        min_balls=1,
        max_balls=1,
        ball_sigma=1.0,
        damping=1.0,
        max_push=0.5,
        n_train=64,
        n_val=1,
        n_test=1,
    )
    data = dm.dataset("train").tensors
    video = data["video"][:, :, 0].double()  # (n, T, S, S)
    assert float(video.min()) >= 0 and float(video.max()) <= 1
    grid = torch.arange(video.shape[-1], dtype=torch.float64)
    mass = video.sum((-1, -2))
    centroid = torch.stack([(video.sum(-1) * grid).sum(-1), (video.sum(-2) * grid).sum(-1)], -1) / mass[..., None]
    accel = centroid[:, 2:] - 2 * centroid[:, 1:-1] + centroid[:, :-2]  # (n, T-2, 2): push after frame t+1
    push = 0.5 * data["action"][:, 1:-1].double()
    inside = ((centroid > 3) & (centroid < 28)).all(-1)  # blobs clear of the walls at all three frames
    ok = inside[:, 2:] & inside[:, 1:-1] & inside[:, :-2]
    assert ok.sum() > 50
    torch.testing.assert_close(accel[ok], push[ok], atol=0.05, rtol=0)
    # the reward is the (negative, normalised) distance of the ball to the centre
    centre = (32 - 1) / 2
    reward = -(centroid - centre).norm(dim=-1) / 16
    torch.testing.assert_close(reward[ok.any(-1)], data["reward"][..., 0].double()[ok.any(-1)], atol=0.05, rtol=0)


def test_multi_frequency_periods_and_flat_hold() -> None:
    band = MultiFrequencyDataModule(frames=16, n_train=6, n_val=2, n_test=2)
    flat = MultiFrequencyDataModule(frames=16, allocation="flat", n_train=6, n_val=2, n_test=2)
    layout = band.schema.layout
    assert {n: (s.period, s.num_frames) for n, s in layout.regions.items()} == {
        "fast": (1, 16),
        "medium": (2, 8),
        "slow": (4, 4),
    }
    assert {s.period for s in flat.schema.layout.regions.values()} == {1}
    assert {s.num_frames for s in flat.schema.layout.regions.values()} == {16}
    b, f = band.dataset("train").tensors, flat.dataset("train").tensors
    for name, period in (("fast", 1), ("medium", 2), ("slow", 4)):
        torch.testing.assert_close(f[name], b[name].repeat_interleave(period, dim=1), rtol=0, atol=0)
    # t_current counts real frames: medium's last frame is real 14, slow's is real 12
    with pytest.warns(UserWarning, match=r"past region\(s\) 'medium' .*'slow' .*context only"):
        MultiFrequencyDataModule(frames=16, t_current=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultiFrequencyDataModule(frames=16, t_current=8)  # every stream still has future frames


def test_cartpole_actions_are_one_hot_and_failures_are_rewarded() -> None:
    dm = CartPoleDataModule(n_train=256, n_val=2, n_test=2)
    data = dm.dataset("train").tensors
    torch.testing.assert_close(data["action"].sum(-1), torch.ones(256, 8))
    assert set(data["reward"].unique().tolist()) <= {0.0, -1.0}
    failed = data["reward"][..., 0] < 0  # (n, T)
    assert failed.any()
    assert not failed[:, :-1].any()  # windows end at the failure step
    survival = CartPoleDataModule(reward_mode="survival", n_train=8, n_val=2, n_test=2)
    assert set(survival.dataset("train").tensors["reward"].unique().tolist()) == {1.0}


def test_video_folder_clips_follow_the_video(video_dir: Path) -> None:
    dm = VideoFolderDataModule(str(video_dir), frames=4, size=32, patch_size=8, clip_stride=2)
    assert dm.num_clips == {"train": 3, "val": 1, "test": 1}  # clips start at 0, 2, 4, 6, 8
    clips = [dm.dataset(s)[i]["video"] for s in ("train", "val", "test") for i in range(len(dm.dataset(s)))]
    for clip in clips:
        assert float(clip.min()) >= 0 and float(clip.max()) <= 1
        cols = clip[:, 0].mean(1)  # (frames, width): column brightness per frame
        bright = cols.argmax(-1).float()
        assert (bright.diff() > 0).all()  # the bar moves right every frame


# -- the contract of the base class -----------------------------------------------------------


class _Broken(CanvasDataModule):
    """Yields a reward of the wrong shape, or forgets to build its canvas."""

    def __init__(self, build_canvas: bool = True, batch_size: int = 2, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, d_model=8)
        if build_canvas:
            self._init_canvas()

    def build_schema(self):
        from canvas_engineering import CanvasLayout, CanvasSchema

        return CanvasSchema(CanvasLayout(T=2, H=1, W=1, d_model=8, regions={"reward": (0, 2, 0, 1, 0, 1)}))

    def build_region_formats(self) -> dict[str, RegionFormat]:
        return {"reward": RegionFormat("vector", dim=1)}

    def build_dataset(self, split: str) -> TensorDictDataset:
        return TensorDictDataset({"reward": torch.zeros(4, 3, 1)})


def test_setup_checks_samples_against_the_schema() -> None:
    wrong = r"region 'reward' must be a float32 tensor of shape \(2, 1\), got \(3, 1\)"
    with pytest.raises(CanvasValidationError, match=wrong):
        _Broken().setup("fit")
    with pytest.raises(CanvasValidationError, match="must call self._init_canvas"):
        _Broken(build_canvas=False).schema  # noqa: B018


# -- real fits ---------------------------------------------------------------------------------------


def _fit(dm: CanvasDataModule, **module_kwargs: object) -> tuple[float, CanvasModule]:
    model = CanvasModule(dm.schema, dm.region_formats, **module_kwargs)
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers / small-batch advice
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    return float(trainer.callback_metrics["train/loss"]), model


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n != "video_folder_rgb"])
def test_canvas_dit_fits_on_each_datamodule(name: str, video_dir: Path) -> None:
    loss, model = _fit(_tiny(name, video_dir), backbone_config={"depth": 1, "n_heads": 2})
    assert math.isfinite(loss)
    assert type(model.backbone).__name__ == "CanvasDiT"


@pytest.mark.slow
def test_cogvideox_fits_on_bouncing_balls() -> None:
    pytest.importorskip("diffusers")
    tiny = {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "num_layers": 1,
        "time_embed_dim": 8,
        "text_embed_dim": 16,
    }
    loss, model = _fit(_tiny("bouncing_balls"), backbone="cogvideox", backbone_config={"config": tiny})
    assert math.isfinite(loss)
    assert type(model.backbone).__name__ == "CogVideoXBackbone"


@pytest.mark.slow
def test_predict_dataloader_feeds_canvas_module_sampling() -> None:
    dm = _tiny("bouncing_balls")
    config = {"depth": 1, "n_heads": 2}
    model = CanvasModule(dm.schema, dm.region_formats, backbone_config=config, num_inference_steps=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictions = trainer.predict(model, datamodule=dm)
    assert len(predictions) == 1  # n_test=4, batch_size=4
    for name, shape in dm.sample_shapes().items():
        assert tuple(predictions[0][name].shape) == (4, *shape)


def test_cartpole_reports_the_observation_scaling_it_applies() -> None:
    from canvas_engineering.datamodules.cartpole import OBS_SCALE

    dm = CartPoleDataModule(n_train=4, n_val=2, n_test=2, batch_size=2)
    assert dm.normalization == {"obs": {"mean": [0.0] * 4, "std": [float(x) for x in OBS_SCALE]}}
    assert CartPoleDataModule(normalize=False).normalization == {}
