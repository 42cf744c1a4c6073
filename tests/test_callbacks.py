"""Schedules and Lightning callbacks on a real ``Trainer`` with a tiny canvas model (CPU, seconds)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from canvas_engineering.callbacks import (
    AttentionSharpening,
    CanvasPictures,
    LoopCheckpoint,
    LoopCurriculum,
    RNGState,
    prediction_figure,
)
from canvas_fixtures import NO_VAL_DATA
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from canvas_engineering import (
    CanvasLayout,
    CanvasSchema,
    CanvasTopology,
    CurriculumScheduler,
    SharpeningSchedule,
    load_loop_checkpoint,
)
from canvas_engineering.models.looped import LoopedBlockWrapper
from canvas_engineering.models.region_codecs import RegionFormat
from canvas_engineering.training.module import CanvasModule

pytestmark = NO_VAL_DATA

FORMATS = {
    "video": {"kind": "patches", "channels": 1, "patch_size": 4},
    "action": {"kind": "action", "dim": 2},
    "reward": {"kind": "vector", "dim": 1},
}
BATCH = 2
BATCHES_PER_EPOCH = 3


def make_model(max_loops: int = 3) -> CanvasModule:
    layout = CanvasLayout(
        T=6,
        H=5,
        W=4,
        d_model=32,
        regions={"video": (0, 6, 0, 4, 0, 4), "action": (0, 6, 4, 5, 0, 1), "reward": (0, 6, 4, 5, 1, 2)},
        t_current=3,
    )
    schema = CanvasSchema(layout, CanvasTopology.causal_temporal(list(layout.regions)))
    return CanvasModule(schema, FORMATS, backbone_config={"depth": 2, "n_heads": 2}, max_loops=max_loops)


class TinyCanvasData(Dataset):
    """Fixed random samples (generated once from their own generator)."""

    def __init__(self, n: int = BATCH * BATCHES_PER_EPOCH, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = [
            {
                "video": torch.rand(6, 1, 16, 16, generator=g),
                "action": torch.randn(6, 2, generator=g),
                "reward": torch.randn(6, 1, generator=g),
            }
            for _ in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def loader(shuffle: bool = False) -> DataLoader:
    return DataLoader(TinyCanvasData(), batch_size=BATCH, shuffle=shuffle, num_workers=0)


def trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
        "default_root_dir": tmp_path,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


class Spy(Callback):
    """Record, per training step, what each looped block actually ran with.

    A forward pre-hook on every looped block records ``current_loops`` and ``betas`` when the
    block runs in training, and a hook on the wrapped block counts its calls (the loops run)
    and the beta each call received.
    """

    def __init__(self) -> None:
        self.step = -1
        self.records: dict[int, list[tuple[int, tuple[float, ...]]]] = {}
        self.calls: dict[int, list[float]] = {}
        self._handles: list[Any] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install hooks on every looped block and its wrapped block."""
        for block in pl_module.backbone.looped_blocks:
            self._handles.append(block.register_forward_pre_hook(self._outer))
            self._handles.append(block.block.register_forward_pre_hook(self._inner, with_kwargs=True))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Training step ``global_step`` starts."""
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Outside training steps nothing is recorded."""
        self.step = -1

    def _outer(self, block: LoopedBlockWrapper, args: tuple) -> None:
        if self.step >= 0:
            self.records.setdefault(self.step, []).append((block.current_loops, tuple(block.betas)))

    def _inner(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.step >= 0:
            beta = kwargs["beta"] if "beta" in kwargs else args[2]
            self.calls.setdefault(self.step, []).append(float(beta))

    def loops(self) -> dict[int, int]:
        """Step -> the loop count every looped block ran with (asserting they agree)."""
        out = {}
        for step, recs in self.records.items():
            counts = {n for n, _ in recs}
            assert len(counts) == 1, f"step {step}: blocks disagree on loops {counts}"
            out[step] = counts.pop()
        return out


# -- schedules ------------------------------------------------------------------------------


def test_curriculum_seed_example() -> None:
    scheduler = CurriculumScheduler(max_loops=3, total_steps=5000)
    # the seed's "n = 1 for steps 0-1666, 2 for 1667-3333, 3 for 3334-5000"
    assert [scheduler.get_loops(s) for s in (0, 1666, 1667, 3333, 3334, 4999, 5000, 10**6)] == [1, 1, 2, 2, 3, 3, 3, 3]
    assert scheduler.boundaries == [1667, 3334]
    assert [CurriculumScheduler(3, 6).get_loops(s) for s in range(8)] == [1, 1, 2, 2, 3, 3, 3, 3]
    assert [CurriculumScheduler(1, 4).get_loops(s) for s in range(5)] == [1] * 5


def test_curriculum_warmup_and_step_sets_blocks() -> None:
    scheduler = CurriculumScheduler(max_loops=2, total_steps=10, warmup_fraction=0.4)
    assert scheduler.warmup_steps == 4
    assert [scheduler.get_loops(s) for s in range(11)] == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert scheduler.boundaries == [7]
    blocks = [
        LoopedBlockWrapper(torch.nn.Linear(4, 4), max_loops=2),
        LoopedBlockWrapper(torch.nn.Linear(4, 4), max_loops=1),
    ]
    assert scheduler.step(blocks, 9) == 2
    assert [b.current_loops for b in blocks] == [2, 1]  # a block with fewer loops runs all of them
    model = make_model()
    assert CurriculumScheduler(3, 3).step(model, 2) == 3
    assert model.backbone.current_loops == 3


def test_sharpening_seed_example() -> None:
    schedule = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=4.0)
    assert schedule.betas == [1.0, 2.5, 4.0]
    assert [schedule(i) for i in range(3)] == [1.0, 2.5, 4.0]
    assert schedule.beta(1) == 2.5
    assert SharpeningSchedule(max_loops=1, beta_min=2.0, beta_max=8.0).betas == [2.0]
    assert SharpeningSchedule(3, 1.0, 4.0, "exponential").betas == [1.0, 2.0, 4.0]
    torch.testing.assert_close(SharpeningSchedule(3, 1.0, 4.0, "cosine").betas, [1.0, 2.5, 4.0])
    warm = SharpeningSchedule(3, 1.0, 4.0, warmup_steps=4)
    assert [warm.betas_at(s) for s in (0, 2, 4, 100)] == [
        [1.0, 1.0, 1.0],
        [1.0, 1.75, 2.5],
        [1.0, 2.5, 4.0],
        [1.0, 2.5, 4.0],
    ]


@pytest.mark.parametrize(
    ("factory", "argument"),
    [
        (lambda: CurriculumScheduler(max_loops=0), "max_loops=0"),
        (lambda: CurriculumScheduler(total_steps=0), "total_steps=0"),
        (lambda: CurriculumScheduler(warmup_fraction=1.0), "warmup_fraction=1.0"),
        (lambda: CurriculumScheduler().get_loops(-1), "step=-1"),
        (lambda: SharpeningSchedule(beta_min=0.0), "beta_min=0.0"),
        (lambda: SharpeningSchedule(beta_max=float("nan")), "beta_max=nan"),
        (lambda: SharpeningSchedule(schedule="cubic"), "schedule='cubic'"),
        (lambda: SharpeningSchedule(3).beta(3), "loop_idx=3"),
        (lambda: SharpeningSchedule(warmup_steps=-1), "warmup_steps=-1"),
        (lambda: LoopCurriculum(total_steps=0), "total_steps=0"),
        (lambda: LoopCurriculum(max_loops=1.5), "max_loops=1.5"),
        (lambda: LoopCurriculum(warmup_fraction=-0.1), "warmup_fraction=-0.1"),
        (lambda: AttentionSharpening(beta_max=-1.0), "beta_max=-1.0"),
        (lambda: AttentionSharpening(warmup_steps=-2), "warmup_steps=-2"),
        (lambda: AttentionSharpening(schedule="step"), "schedule='step'"),
        (lambda: LoopCheckpoint("d", every_n_steps=-1), "every_n_steps=-1"),
        (lambda: LoopCheckpoint("d", every_n_steps=0, save_last=False), "every_n_steps=0"),
        (lambda: LoopCheckpoint("d", filename="x{iteration}.pt"), "filename="),
        (lambda: LoopCheckpoint("d", filename="sub/x{step}.pt"), "filename="),
        (lambda: CanvasPictures(every_n_epochs=0), "every_n_epochs=0"),
        (lambda: CanvasPictures(num_samples=0), "num_samples=0"),
    ],
)
def test_arguments_are_validated(factory: Any, argument: str) -> None:
    with pytest.raises(ValueError, match=argument.replace("(", r"\(").replace("[", r"\[")):
        factory()


# -- loops reach the model ------------------------------------------------------------------


def test_curriculum_and_sharpening_reach_the_blocks(tmp_path: Path) -> None:
    L.seed_everything(0)
    model, spy = make_model(), Spy()
    curriculum = LoopCurriculum()  # max_loops from the model, total_steps from max_steps
    sharpening = AttentionSharpening(beta_min=1.0, beta_max=4.0, warmup_steps=4)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer(tmp_path, [curriculum, sharpening, spy], max_steps=6, logger=logger, log_every_n_steps=1).fit(
        model, loader()
    )
    assert curriculum.scheduler is not None
    assert (curriculum.scheduler.max_loops, curriculum.scheduler.total_steps) == (3, 6)
    assert spy.loops() == {0: 1, 1: 1, 2: 2, 3: 2, 4: 3, 5: 3}
    for step, betas in spy.calls.items():
        loops = spy.loops()[step]
        assert len(betas) == 2 * loops  # 2 looped blocks, each ran `loops` passes
        progress = min(1.0, step / 4)
        expected = [1.0 + progress * (b - 1.0) for b in (1.0, 2.5, 4.0)][:loops]
        assert betas == expected * 2, step
    assert spy.records[5][0][1] == (1.0, 2.5, 4.0)
    assert curriculum.current_loops == 3 and curriculum.last_step == 5
    assert sharpening.current_betas == [1.0, 2.5, 4.0]
    assert [b.betas for b in model.backbone.looped_blocks] == [[1.0, 2.5, 4.0]] * 2
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("loops/active")]
    assert [(int(r["step"]), float(r["loops/active"])) for r in rows] == [(s, float(n)) for s, n in spy.loops().items()]
    assert [float(r["sharpening/beta_2"]) for r in rows] == [1.0, 1.75, 2.5, 3.25, 4.0, 4.0]


def test_curriculum_length_from_epochs(tmp_path: Path) -> None:
    curriculum, spy = LoopCurriculum(max_loops=2), Spy()
    trainer(tmp_path, [curriculum, spy], max_epochs=2).fit(make_model(), loader())
    assert curriculum.scheduler is not None and curriculum.scheduler.total_steps == 2 * BATCHES_PER_EPOCH
    assert spy.loops() == {0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 2}


def test_curriculum_refuses_a_model_without_loops(tmp_path: Path) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    with pytest.raises(TypeError, match="BoringModel has no set_loops"):
        trainer(tmp_path, [LoopCurriculum(total_steps=2)], max_steps=1).fit(BoringModel())
    with pytest.raises(ValueError, match="max_loops=4 exceeds the model's max_loops=3"):
        trainer(tmp_path, [LoopCurriculum(max_loops=4, total_steps=2)], max_steps=1).fit(make_model(), loader())


# -- resume ---------------------------------------------------------------------------------

N = BATCHES_PER_EPOCH  # stop at an epoch boundary: Lightning cannot resume mid-epoch with a plain DataLoader


def _run(tmp_path: Path, max_steps: int, callbacks: list[Callback], ckpt_path: str | None = None, **kwargs: Any):
    L.seed_everything(1234)
    model, spy = make_model(), Spy()
    t = trainer(tmp_path, [*callbacks, spy], max_steps=max_steps, **kwargs)
    t.fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
    return t, model, spy


def _schedule_callbacks(total_steps: int | None = 2 * N) -> list[Callback]:
    return [LoopCurriculum(total_steps=total_steps), AttentionSharpening(beta_max=3.0, warmup_steps=4), RNGState()]


# Resuming writes its next checkpoints next to the one it resumed from, as a real resumed run does.
RESUMES_INTO_ITS_CHECKPOINT_DIR = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")


def _resume(tmp_path: Path, with_rng: bool = True):
    """Fit N steps with a ModelCheckpoint at step N, then resume from it to 2N steps."""
    first = _schedule_callbacks() if with_rng else _schedule_callbacks()[:2]
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=N, save_top_k=-1)
    _run(tmp_path, N, [*first, checkpoint], enable_checkpointing=True)
    path = tmp_path / "ckpt" / f"epoch=0-step={N}.ckpt"
    assert path.exists(), sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # constructor arguments left at their defaults: the schedule comes back from the checkpoint
    second = (
        [LoopCurriculum(), AttentionSharpening(), RNGState()] if with_rng else [LoopCurriculum(), AttentionSharpening()]
    )
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=N, save_top_k=-1)
    t, model, spy = _run(tmp_path, 2 * N, [*second, checkpoint], ckpt_path=str(path), enable_checkpointing=True)
    return t, model, spy, second


@RESUMES_INTO_ITS_CHECKPOINT_DIR
def test_resume_continues_exactly(tmp_path: Path) -> None:
    """2N steps in one go == N steps, stop, resume from the Lightning checkpoint for N more."""
    whole = _schedule_callbacks()
    t_whole, model_whole, spy_whole = _run(tmp_path / "whole", 2 * N, whole)
    t_resumed, model_resumed, spy_resumed, resumed = _resume(tmp_path / "split")
    assert t_whole.global_step == t_resumed.global_step == 2 * N

    # loop counts and betas per step
    assert spy_whole.loops() == {0: 1, 1: 1, 2: 2, 3: 2, 4: 3, 5: 3}
    assert spy_resumed.loops() == {s: n for s, n in spy_whole.loops().items() if s >= N}
    assert {s: spy_resumed.calls[s] for s in range(N, 2 * N)} == {s: spy_whole.calls[s] for s in range(N, 2 * N)}
    assert spy_whole.calls[2 * N - 1] == [1.0, 2.0, 3.0] * 2  # 3 loops x 2 blocks, warm-up done

    # callback state
    for a, b in zip(whole[:2], resumed[:2], strict=True):
        assert a.state_dict() == b.state_dict()
    assert resumed[0].state_dict()["resolved_total_steps"] == 2 * N
    rng_whole, rng_resumed = whole[2].state_dict(), resumed[2].state_dict()
    assert torch.equal(rng_whole["torch"], rng_resumed["torch"])
    assert rng_whole["python"] == rng_resumed["python"]

    # weights, bit for bit
    params_whole, params_resumed = dict(model_whole.named_parameters()), dict(model_resumed.named_parameters())
    assert params_whole.keys() == params_resumed.keys()
    for name, p in params_whole.items():
        assert torch.equal(p, params_resumed[name]), f"{name}: max diff {(p - params_resumed[name]).abs().max():.3g}"


@RESUMES_INTO_ITS_CHECKPOINT_DIR
def test_resume_without_rng_state_diverges(tmp_path: Path) -> None:
    """Why ``RNGState`` exists: Lightning restores no RNG, so the resumed fit draws other noise."""
    _, model_whole, spy_whole = _run(tmp_path / "whole", 2 * N, _schedule_callbacks()[:2])
    _, model_resumed, spy_resumed, _ = _resume(tmp_path / "split", with_rng=False)
    assert spy_resumed.loops() == {s: n for s, n in spy_whole.loops().items() if s >= N}  # schedules still agree
    assert any(not torch.equal(a, b) for a, b in zip(model_whole.parameters(), model_resumed.parameters(), strict=True))


def test_state_dict_round_trip_and_old_checkpoints() -> None:
    curriculum = LoopCurriculum(max_loops=2, total_steps=10, warmup_fraction=0.2)
    fresh = LoopCurriculum()
    fresh.load_state_dict({**curriculum.state_dict(), "resolved_max_loops": 2, "resolved_total_steps": 10})
    assert fresh.scheduler is not None and fresh.scheduler.state_dict() == {
        "max_loops": 2,
        "total_steps": 10,
        "warmup_fraction": 0.2,
    }
    old = LoopCurriculum(total_steps=7)
    old.load_state_dict({})  # keys missing from an older checkpoint keep their current values
    assert (old.total_steps, old.scheduler, old.current_loops) == (7, None, 0)
    sharpening = AttentionSharpening(beta_min=0.5, beta_max=2.0, warmup_steps=3, schedule="cosine")
    other = AttentionSharpening()
    other.load_state_dict({**sharpening.state_dict(), "resolved_max_loops": 3})
    assert other.schedule_ is not None
    assert other.schedule_.state_dict() == SharpeningSchedule(3, 0.5, 2.0, "cosine", 3).state_dict()
    saver = LoopCheckpoint("d", every_n_steps=5)
    restored = LoopCheckpoint("d", every_n_steps=5)
    saver.saved_paths, saver.last_saved_step = ["d/loops-step5.pt"], 5
    restored.load_state_dict(saver.state_dict())
    assert (restored.saved_paths, restored.last_saved_step) == (["d/loops-step5.pt"], 5)
    assert saver.state_key == "LoopCheckpoint{'dirpath': 'd', 'every_n_steps': 5}"
    rng = RNGState()
    state = rng.state_dict()
    expected = torch.rand(3)
    rng.load_state_dict(state)
    assert torch.equal(torch.rand(3), expected)


# -- loop checkpoints -----------------------------------------------------------------------


def test_loop_checkpoint_files(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = make_model()
    saver = LoopCheckpoint(tmp_path / "loops", every_n_steps=2)
    trainer(tmp_path, [LoopCurriculum(), saver], max_steps=5).fit(model, loader())
    names = sorted(p.name for p in (tmp_path / "loops").iterdir())
    assert names == ["loops-last.pt", "loops-step2.pt", "loops-step4.pt"]
    assert saver.last_saved_step == 4
    assert saver.state_dict()["saved_paths"] == [
        str(tmp_path / "loops" / n) for n in ("loops-step2.pt", "loops-step4.pt", "loops-last.pt")
    ]

    fresh = make_model()
    config = load_loop_checkpoint(fresh, tmp_path / "loops" / "loops-last.pt")
    assert config["extra"]["global_step"] == 5
    assert config["extra"]["current_loops"] == 3  # curriculum over 5 steps: step 4 runs 3 loops
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(fresh.named_parameters())[name]), name
    step2 = load_loop_checkpoint(make_model(), tmp_path / "loops" / "loops-step2.pt")
    assert (step2["extra"]["global_step"], step2["extra"]["current_loops"]) == (2, 1)  # steps 0-1 ran 1 loop
    assert step2["loop_parameters"] == ["backbone.blocks.0.loop_embeddings", "backbone.blocks.1.loop_embeddings"]


# -- pictures -------------------------------------------------------------------------------


def test_prediction_figure_draws_every_kind() -> None:
    model = make_model()
    for name, shape in (("video", (2, 6, 1, 16, 16)), ("action", (2, 6, 2)), ("reward", (1, 6, 1))):
        fig = prediction_figure(name, RegionFormat(**FORMATS[name]), torch.rand(shape), torch.rand(shape), model.layout)
        rows = 2 * shape[0] if name == "video" else shape[0]
        assert len(fig.axes) == rows * (6 if name == "video" else 1)
        fig.clf()
    with pytest.raises(ValueError, match="differ"):
        prediction_figure(
            "reward", RegionFormat("vector", dim=1), torch.rand(1, 6, 1), torch.rand(1, 5, 1), model.layout
        )


def test_canvas_pictures_in_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    L.seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    pictures = CanvasPictures(every_n_epochs=1, num_samples=2, num_inference_steps=2, save_dir=tmp_path / "png")
    t = trainer(tmp_path, [pictures], max_epochs=2, logger=logger, limit_val_batches=1, num_sanity_val_steps=1,
                log_every_n_steps=N)
    t.fit(make_model(), loader(), loader())
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    expected = {
        "canvas/layout",
        "canvas/attention_mask",
        "predictions/video",
        "predictions/action",
        "predictions/reward",
    }
    assert expected <= tags
    assert [e.step for e in events.Images("canvas/layout")] == [0]
    assert [e.step for e in events.Images("predictions/video")] == [N, 2 * N]  # epochs 1 and 2, not the sanity check
    assert events.Images("predictions/action")[0].width > 100
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "attention_mask.png",
        "layout.png",
        "predictions_action.png",
        "predictions_reward.png",
        "predictions_video.png",
    ]


def test_canvas_pictures_leave_training_unchanged(tmp_path: Path) -> None:
    """Sampling pictures uses its own generator: the fit draws the same numbers with or without it."""
    weights = []
    for pictures in ([], [CanvasPictures(num_inference_steps=2, save_dir=tmp_path / "png")]):
        L.seed_everything(0)
        model = make_model()
        trainer(tmp_path, pictures, max_epochs=2, limit_val_batches=1).fit(model, loader(shuffle=True), loader())
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_canvas_pictures_without_tensorboard_warns_once(tmp_path: Path) -> None:
    def fit(pictures: CanvasPictures, logger: Any) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer(tmp_path, [pictures], max_steps=1, logger=logger, limit_val_batches=1).fit(
                make_model(), loader(), loader()
            )
        return [str(w.message) for w in caught if "CanvasPictures" in str(w.message)]

    pictures = CanvasPictures()
    first = fit(pictures, CSVLogger(tmp_path))
    assert len(first) == 1 and "no TensorBoardLogger (got CSVLogger); pictures are skipped" in first[0]
    assert fit(pictures, False) == []  # once per instance
    assert "(got no logger)" in fit(CanvasPictures(), False)[0]
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(
    "module",
    [
        "canvas_engineering.training.schedules",
        *(f"canvas_engineering.callbacks.{m}" for m in ("loops", "checkpoints", "pictures")),
    ],
)
def test_docstring_examples(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0


def test_validate_from_checkpoint_runs_the_checkpoint_loops(tmp_path: Path) -> None:
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4)
    callbacks = [LoopCurriculum(total_steps=6), AttentionSharpening(beta_max=2.0, warmup_steps=8), checkpoint]
    trainer(tmp_path, callbacks, max_steps=4, enable_checkpointing=True).fit(make_model(), loader())
    seen = []

    class Probe(Callback):
        def on_validation_batch_start(self, trainer: L.Trainer, pl_module: CanvasModule, *args: Any) -> None:
            block = pl_module.backbone.looped_blocks[0]
            seen.append((block.current_loops, block.betas))

    model = make_model()
    callbacks = [LoopCurriculum(), AttentionSharpening(), Probe(), checkpoint]  # every callback the checkpoint holds
    trainer(tmp_path, callbacks, limit_val_batches=1, enable_checkpointing=True).validate(
        model, loader(), ckpt_path=checkpoint.best_model_path
    )
    # steps 0-3 ran; step 3 used 3 * 3 // 6 + 1 = 2 loops and betas 1 + 3/8 * (b - 1)
    assert seen == [(2, [1.0, 1.1875, 1.375])]
    assert model.backbone.current_loops == 2
