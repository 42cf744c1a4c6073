"""Resume is exact in every checkpoint mode Lightning offers (CPU, bit for bit, one process per fit).

Each fit runs :func:`resume_fit.run` in a process of its own: a 2-loop ``CanvasModule`` on a tiny
``BouncingBallsDataModule`` (3 shuffled training batches per epoch) with ``LoopCurriculum``,
``AttentionSharpening`` and ``RNGState`` on. Fitting ``TOTAL`` steps in one go must give the
same weights, bit for bit, as fitting ``STOP`` steps, stopping, and resuming from a checkpoint
to ``TOTAL``; ``STOP`` falls in the middle of the second epoch.

The processes are forked from a ``forkserver`` that has imported torch, Lightning and the
library once and done nothing else, so each fit starts from a fresh process without paying
the imports again (several seconds each).
"""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import pytest
import resume_fit  # tests/ is on sys.path, as for every test module
import torch
from canvas_engineering.datamodules import BouncingBallsDataModule, ResumableDataLoader

TOTAL, STOP = 8, 4  # 3 batches an epoch: epoch ends after steps 3 and 6, step 4 is mid-epoch
TIMEOUT = 600
_FORK = multiprocessing.get_context("forkserver")
_FORK.set_forkserver_preload(["resume_fit"])  # has effect when this module starts the server


def _start(config: dict[str, Any], reports: Any = None) -> Any:
    proc = _FORK.Process(target=resume_fit.run, args=(config, reports), daemon=True)
    proc.start()
    return proc


def _result(proc: Any, config: dict[str, Any]) -> dict[str, Any]:
    proc.join(TIMEOUT)
    out = Path(config["out"])
    result = torch.load(out, weights_only=False) if out.exists() else {}
    assert proc.exitcode == 0, result.get("error", f"exit code {proc.exitcode}")
    return result


def _fit(config: dict[str, Any]) -> dict[str, Any]:
    """Run one fit in a fresh process and return its final state."""
    return _result(_start(config), config)


def _fits(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the fits two at a time (the machine has 2 cores)."""
    results: list[dict[str, Any]] = []
    for i in range(0, len(configs), 2):
        pair = configs[i : i + 2]
        procs = [_start(config) for config in pair]
        results += [_result(proc, config) for proc, config in zip(procs, pair, strict=True)]
    return results


# -- the training loader, in this process ------------------------------------------------------


def _tiny_data(seed: int = 3) -> BouncingBallsDataModule:
    dm = BouncingBallsDataModule(frames=4, size=8, patch_size=4, n_train=7, n_val=2, n_test=2, batch_size=2, seed=seed)
    dm.setup("fit")
    return dm


def _epoch(loader: ResumableDataLoader) -> list[float]:
    return [round(float(x), 6) for batch in loader for x in batch["reward"][:, 0, 0]]


def test_training_order_depends_on_seed_and_epoch_only() -> None:
    """Each epoch is a permutation fixed by (seed, epoch); the global RNG is neither read nor moved."""
    dm = _tiny_data()
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    before = torch.get_rng_state()
    first = _epoch(loader)
    loader.sampler.set_epoch(1)
    second = _epoch(loader)
    _epoch(dm.val_dataloader())
    assert torch.equal(torch.get_rng_state(), before)
    assert sorted(first) == sorted(second) and first != second and len(first) == 7
    torch.manual_seed(99)  # another global state: the same order
    again = _tiny_data().train_dataloader()
    again.sampler.set_epoch(1)
    assert _epoch(again) == second
    assert _epoch(_tiny_data(seed=4).train_dataloader()) != first


def test_training_loader_resumes_mid_epoch() -> None:
    """The state after k batches makes a fresh loader hand out the rest of that epoch; a finished epoch, the next."""
    dm = _tiny_data()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    whole = _epoch(loader)
    assert loader.state_dict() == {"epoch": 2, "samples": 7}
    batches = iter(loader)
    next(batches)
    next(batches)
    state = loader.state_dict()
    assert state == {"epoch": 2, "samples": 4}
    fresh = _tiny_data().train_dataloader()
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)  # Lightning sets the epoch it resumes: the skip stays
    assert _epoch(fresh) == whole[4:]
    finished = _tiny_data().train_dataloader()
    finished.load_state_dict({"epoch": 2, "samples": 7})
    nxt = _tiny_data().train_dataloader()
    nxt.sampler.set_epoch(3)
    assert _epoch(finished) == _epoch(nxt)


# -- fits, one process each -------------------------------------------------------------------


def _assert_same_fit(whole: dict[str, Any], resumed: dict[str, Any], mode: str) -> None:
    assert resumed["global_step"] == whole["global_step"] == TOTAL, mode
    assert resumed["callbacks"] == whole["callbacks"], mode  # loop curriculum and sharpening schedules
    assert whole["weights"].keys() == resumed["weights"].keys()
    differ = {
        name: float((a.double() - resumed["weights"][name].double()).abs().max())
        for name, a in whole["weights"].items()
        if not torch.equal(a, resumed["weights"][name])
    }
    assert not differ, f"{mode}: {len(differ)} of {len(whole['weights'])} tensors differ (max diff {differ})"
    not_resumable = [w for w in resumed["warnings"] if "not resumable" in w]
    assert not not_resumable, f"{mode}: {not_resumable}"


def _group(folder: Path, val: bool, resume_from: list[str]) -> dict[str, dict[str, Any]]:
    """Fit TOTAL steps; fit STOP steps writing every step and epoch checkpoint; resume from each of ``resume_from``."""
    ckpt = folder / "ckpt"
    whole, first = _fits(
        [
            {"out": str(folder / "whole.pt"), "max_steps": TOTAL, "val": val},
            {
                "out": str(folder / "first.pt"),
                "max_steps": STOP,
                "total_steps": TOTAL,
                "val": val,
                "ckpt_dir": str(ckpt),
                "every_n_train_steps": 1,
                "every_n_epochs": 1,
            },
        ]
    )
    assert first["global_step"] == STOP
    written = sorted(p.name for p in ckpt.iterdir())
    assert set(resume_from) <= set(written), written
    resumed = _fits(
        [
            {
                "out": str(folder / f"resumed-{name}.pt"),
                "max_steps": TOTAL,
                "total_steps": TOTAL,
                "val": val,
                "ckpt_path": str(ckpt / name),
            }
            for name in resume_from
        ]
    )
    return {"whole": whole, **dict(zip(resume_from, resumed, strict=True))}


@pytest.fixture(scope="module")
def without_validation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Fits without a validation loop."""
    return _group(tmp_path_factory.mktemp("no-val"), False, ["step-step=4.ckpt", "epoch-epoch=0-step=3.ckpt"])


@pytest.fixture(scope="module")
def with_validation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Fits validating (loss and sampled-future metrics) at the end of every epoch."""
    names = ["step-step=3.ckpt", "step-step=4.ckpt", "epoch-epoch=0-step=3.ckpt", "epoch-epoch=1-step=4.ckpt"]
    return _group(tmp_path_factory.mktemp("val"), True, names)


def test_step_checkpoint_mid_epoch(without_validation: dict[str, dict[str, Any]]) -> None:
    """ModelCheckpoint(every_n_train_steps=1) at step 4, in the middle of epoch 1: the loader continues the epoch."""
    _assert_same_fit(without_validation["whole"], without_validation["step-step=4.ckpt"], "step 4, mid-epoch")


def test_epoch_end_checkpoint(without_validation: dict[str, dict[str, Any]]) -> None:
    """ModelCheckpoint(every_n_epochs=1) at the end of epoch 0 (written in on_train_epoch_end)."""
    _assert_same_fit(without_validation["whole"], without_validation["epoch-epoch=0-step=3.ckpt"], "epoch 0 end")


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("step-step=3.ckpt", "step 3: the last batch of epoch 0, before its validation"),
        ("step-step=4.ckpt", "step 4, mid-epoch"),
        ("epoch-epoch=0-step=3.ckpt", "epoch 0 end, after its validation"),
        ("epoch-epoch=1-step=4.ckpt", "end of a fit that max_steps stopped mid-epoch"),
    ],
)
def test_with_a_validation_loop_every_epoch(with_validation: dict[str, dict[str, Any]], name: str, mode: str) -> None:
    """Validation draws noise and samples the future, and it changes nothing in what training draws next."""
    _assert_same_fit(with_validation["whole"], with_validation[name], mode)


def test_last_ckpt_after_sigkill(with_validation: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """SIGKILL at a random moment after a seeded step, then resume from ``last.ckpt`` to the end."""
    chance = random.Random(13)
    after_step, delay = chance.randint(2, TOTAL - 3), chance.uniform(0.0, 0.3)
    ckpt = tmp_path / "ckpt"
    config = {
        "out": str(tmp_path / "killed.pt"),
        "max_steps": TOTAL,
        "val": True,
        "ckpt_dir": str(ckpt),
        "every_n_train_steps": 1,
        "save_last": True,
        "report_steps": True,
    }
    reports = _FORK.Queue()
    proc = _start(config, reports)
    try:
        while reports.get(timeout=TIMEOUT) < after_step:
            pass
        time.sleep(delay)  # somewhere in the next step, or while a checkpoint is being written
        proc.kill()
        proc.join(TIMEOUT)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        reports.close()
    assert proc.exitcode == -9, f"the fit ended by itself (exit code {proc.exitcode}) before it was killed"
    last = ckpt / "last.ckpt"
    stopped_at = torch.load(last, weights_only=False)["global_step"]
    assert after_step - 1 <= stopped_at < TOTAL  # the step reported may not have its checkpoint yet
    resumed = _fit({"out": str(tmp_path / "resumed.pt"), "max_steps": TOTAL, "val": True, "ckpt_path": str(last)})
    _assert_same_fit(with_validation["whole"], resumed, f"last.ckpt at step {stopped_at} after SIGKILL")
