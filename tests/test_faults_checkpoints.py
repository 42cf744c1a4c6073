"""Fault injection on the files holding weights: loop checkpoints, Lightning checkpoints, atomic writes.

Every damaged, foreign or wrongly typed file must be refused with the project's error naming
the file (``LoopCheckpointError`` for loop checkpoints, ``CheckpointFileError`` for
``CanvasModule.load_from_checkpoint``), before any parameter changes; weights holding NaN or
infinities are refused unless the caller opts in; temporary files of killed writers are
removed by the next write to the same target.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from canvas_fixtures import FORMATS, NO_VAL_DATA, tiny_loader, tiny_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from canvas_engineering import CanvasModule, LoopCheckpointError, load_loop_checkpoint, save_loop_checkpoint
from canvas_engineering._atomic import STALE_AFTER_SECONDS, atomic_write_bytes, temp_files_of
from canvas_engineering.errors import CheckpointFileError, IncompatibleModelError
from canvas_engineering.models.loop_checkpoint import FORMAT, SEAL_PREFIX, seal_checkpoint_bytes
from canvas_engineering.models.looped import LoopedBlockWrapper

pytestmark = NO_VAL_DATA

REPO = Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    """A looped block (its loop embeddings are saved) and a trainable head (its bias too)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = LoopedBlockWrapper(nn.Linear(8, 8), max_loops=3, d_model=8)
        self.head = nn.Linear(8, 4)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


def _saved(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a loop checkpoint of :class:`Tiny` (loop embeddings, weights and biases)."""
    path = tmp_path_factory.mktemp("ckpt") / "loops.pt"
    save_loop_checkpoint(Tiny(), path, extra_config={"step": 3})
    return path.read_bytes()


def _refused(path: Path, match: str | None = None) -> LoopCheckpointError:
    """Load ``path`` into a fresh model: it must be refused naming the file, leaving the model as it was."""
    model = Tiny()
    with torch.no_grad():
        model.head.bias.zero_()
    before = _saved(model)
    with pytest.raises(LoopCheckpointError, match=match) as info:
        load_loop_checkpoint(model, path)
    assert repr(str(path)) in str(info.value)
    assert info.value.path == str(path)
    assert _unchanged(model, before)
    return info.value


# -- what a good file is --------------------------------------------------------------------------


def test_a_good_file_loads_exactly_and_ends_with_its_seal(original: bytes, tmp_path: Path) -> None:
    path = tmp_path / "loops.pt"
    path.write_bytes(original)
    model = Tiny()
    with torch.no_grad():
        model.head.bias.zero_()
    config = load_loop_checkpoint(model, path)
    assert torch.equal(model.head.bias, Tiny().head.bias)
    assert config["extra"] == {"step": 3}
    assert original[-(len(SEAL_PREFIX) + 64) :].startswith(SEAL_PREFIX)
    payload = torch.load(io.BytesIO(original), weights_only=True)  # still a plain torch file
    assert payload["format"] == FORMAT and payload["format_version"] == 2


# -- damaged bytes ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_refused(original: bytes, tmp_path: Path, offset: int, mask: int) -> None:
    data = bytearray(original)
    data[offset % len(data)] ^= mask
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    _refused(path)


@pytest.mark.parametrize("seed", range(12))
def test_sixty_four_flipped_bytes_at_seeded_offsets_are_refused(original: bytes, tmp_path: Path, seed: int) -> None:
    # the reported case: 64 bytes flipped inside the file loaded silently (a bias then held 694)
    gen = torch.Generator().manual_seed(seed)
    data = bytearray(original)
    offsets = torch.randint(0, len(data), (64,), generator=gen).tolist()
    masks = torch.randint(1, 256, (64,), generator=gen).tolist()
    for offset, mask in zip(offsets, masks, strict=True):
        data[offset] ^= mask
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    _refused(path)


def test_a_flipped_tensor_byte_names_the_seal(original: bytes, tmp_path: Path) -> None:
    data = bytearray(original)
    offset = data.index(b"data/0") + 200  # well inside the stored tensors
    data[offset] ^= 0x40
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    err = _refused(path, match=r"damaged: its bytes changed since it was written \(SHA-256 seal mismatch")
    assert err.parameter is None


def test_a_broken_seal_prefix_is_refused_not_read_as_an_old_file(original: bytes, tmp_path: Path) -> None:
    data = bytearray(original)
    data[-70] ^= 0x01  # inside "canvas-engineering sha256 ": the file no longer looks sealed
    path = tmp_path / "unsealed.pt"
    path.write_bytes(bytes(data))
    _refused(path, match=r"format_version 2 files end with a SHA-256 seal and this one has none")


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.25, 0.5, 0.9, 0.99])
def test_a_truncated_file_is_refused(original: bytes, tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "short.pt"
    path.write_bytes(original[: int(len(original) * fraction)])
    _refused(path)


@pytest.mark.parametrize("cut", [1, 22, 64, 89, 90, 91, 112])
def test_a_file_missing_its_last_bytes_is_refused(original: bytes, tmp_path: Path, cut: int) -> None:
    path = tmp_path / "short.pt"
    path.write_bytes(original[:-cut])
    _refused(path)


def test_bytes_added_at_the_end_are_refused(original: bytes, tmp_path: Path) -> None:
    path = tmp_path / "long.pt"
    path.write_bytes(original + b"\0")
    _refused(path)


@pytest.mark.parametrize("size", [0, 1, 100, 4096])
def test_random_bytes_are_refused(tmp_path: Path, size: int) -> None:
    gen = torch.Generator().manual_seed(size)
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(torch.randint(0, 256, (size,), generator=gen, dtype=torch.uint8).tolist()))
    _refused(path, match=r"unreadable, damaged or not a torch\.save file")


def test_random_bytes_after_a_zip_signature_are_refused(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    path = tmp_path / "noise.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(torch.randint(0, 256, (2000,), generator=gen, dtype=torch.uint8).tolist()))
    _refused(path)


def test_a_folder_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "folder.pt").mkdir()
    _refused(tmp_path / "folder.pt", match=r"cannot read: Is a directory")
    _refused(tmp_path / "absent.pt", match=r"cannot read: No such file or directory")


# -- wrong types ------------------------------------------------------------------------------------


def _write_payload(path: Path, payload: object, seal: bool = True) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(seal_checkpoint_bytes(buffer.getvalue()) if seal else buffer.getvalue())
    return path


def _good_payload() -> dict:
    return torch.load(io.BytesIO(_saved_bytes()), weights_only=True)


def _saved_bytes() -> bytes:
    buffer = io.BytesIO()
    model = Tiny()
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = {"max_loops": {"block": 3}, "extra": {}}
    torch.save({"format": FORMAT, "format_version": 2, "config": config, "state_dict": state}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: p.update(state_dict=[1, 2]), r"key 'state_dict' must be a dict, got list"),
        (lambda p: p.update(config="x"), r"key 'config' must be a dict, got str"),
        (lambda p: p["state_dict"].update({"head.bias": [1.0, 2.0]}), r"state_dict\['head\.bias'\] must be a dense"),
        (lambda p: p["state_dict"].update({"head.bias": "694"}), r"must be a dense tensor, got str"),
        (lambda p: p["state_dict"].update({3: torch.zeros(1)}), r"state_dict key 3 must be a parameter name"),
        (lambda p: p["config"].update(max_loops=[3]), r"config key 'max_loops' must map block names to integers"),
        (lambda p: p["config"].update(max_loops={"block": "3"}), r"'max_loops' must map block names to integers"),
        (lambda p: p.update(format_version="2"), r"format_version '2' must be an integer >= 1"),
        (lambda p: p.update(format_version=True), r"format_version True must be an integer >= 1"),
        (lambda p: p.update(format_version=0), r"format_version 0 must be an integer >= 1"),
        (lambda p: p.update(format_version=3), r"format_version 3 is newer than this library reads \(2\)"),
        (lambda p: p.update(format="other"), r"not a canvas-engineering loop checkpoint"),
        (lambda p: p.update(extra=1), r"unexpected top-level key 'extra'"),
    ],
)
def test_wrongly_typed_content_is_refused(tmp_path: Path, change: object, match: str) -> None:
    payload = _good_payload()
    change(payload)  # type: ignore[operator]
    _refused(_write_payload(tmp_path / "typed.pt", payload), match=match)


def test_a_list_instead_of_the_payload_is_refused(tmp_path: Path) -> None:
    _refused(_write_payload(tmp_path / "list.pt", [1, 2, 3]), match=r"not a canvas-engineering loop checkpoint")


@pytest.mark.parametrize("path", [None, 3, b"loops.pt", ""])
def test_a_path_of_the_wrong_type_is_refused(path: object) -> None:
    with pytest.raises(LoopCheckpointError, match=r"load_loop_checkpoint: path must be a file path"):
        load_loop_checkpoint(Tiny(), path)  # type: ignore[arg-type]
    with pytest.raises(LoopCheckpointError, match=r"save_loop_checkpoint: path must be a file path"):
        save_loop_checkpoint(Tiny(), path)  # type: ignore[arg-type]


def test_a_model_of_the_wrong_type_is_refused(original: bytes, tmp_path: Path) -> None:
    path = tmp_path / "loops.pt"
    path.write_bytes(original)
    with pytest.raises(IncompatibleModelError, match=r"load_loop_checkpoint: model must be a torch\.nn\.Module, got"):
        load_loop_checkpoint({"head": 1}, path)  # type: ignore[arg-type]
    with pytest.raises(IncompatibleModelError, match=r"save_loop_checkpoint: model must be a torch\.nn\.Module"):
        save_loop_checkpoint("model", path)  # type: ignore[arg-type]


# -- non-finite weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_unless_allowed(tmp_path: Path, bad: float) -> None:
    model = Tiny()
    with torch.no_grad():
        model.head.bias[1] = bad
        model.head.bias[3] = bad
    path = save_loop_checkpoint(model, tmp_path / "diverged.pt")
    err = _refused(path, match=r"parameter 'head\.bias' holds 2 non-finite values \(NaN or infinity\) of 4; .*"
                   r"Pass allow_non_finite=True")
    assert err.parameter == "head.bias"
    fresh = Tiny()
    load_loop_checkpoint(fresh, path, allow_non_finite=True)
    assert torch.equal(fresh.head.bias[[0, 2]], model.head.bias[[0, 2]])
    assert fresh.head.bias[1].item() == bad or (bad != bad and fresh.head.bias[1].isnan())
    assert int((~torch.isfinite(fresh.head.bias)).sum()) == 2


def test_an_unsealed_version_one_file_still_loads(tmp_path: Path) -> None:
    payload = _good_payload()
    payload["format_version"] = 1
    path = _write_payload(tmp_path / "old.pt", payload, seal=False)
    model = Tiny()
    with torch.no_grad():
        model.head.bias.zero_()
    load_loop_checkpoint(model, path)
    assert torch.equal(model.head.bias, Tiny().head.bias)


def test_a_version_two_file_without_its_seal_is_refused(tmp_path: Path) -> None:
    path = _write_payload(tmp_path / "unsealed.pt", _good_payload(), seal=False)
    _refused(path, match=r"format_version 2 files end with a SHA-256 seal and this one has none")


# -- temporary files of killed writers ---------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


def _temp_name(target: Path, pid: int, host: str | None = None) -> Path:
    from canvas_engineering._atomic import _host

    return target.parent / f".{target.name}.tmp-{host or _host()}-{pid}-0badc0de"


def test_the_next_write_removes_a_dead_writers_temp_file_and_keeps_the_others(tmp_path: Path) -> None:
    target = tmp_path / "loops.pt"
    dead = _temp_name(target, _dead_pid())
    live = _temp_name(target, os.getppid())  # a running process: maybe still writing
    old_live = live.with_name(live.name.replace("0badc0de", "01d"))  # running, but untouched for hours
    foreign = _temp_name(target, 1, host="00000000")  # another machine's writer: judged by age only
    other_target = _temp_name(tmp_path / "other.pt", _dead_pid())
    for path in (dead, live, old_live, foreign, other_target):
        path.write_bytes(b"half a checkpoint")
    hours_ago = time.time() - 2 * STALE_AFTER_SECONDS
    os.utime(old_live, (hours_ago, hours_ago))
    assert set(temp_files_of(target)) == {dead, live, old_live, foreign}

    save_loop_checkpoint(Tiny(), target)
    assert set(temp_files_of(target)) == {live, foreign}
    assert other_target.exists()  # the temp file of another target is not this write's business
    load_loop_checkpoint(Tiny(), target)


_KILLED_WRITER = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
def hang(fd):
    print("writing", flush=True)
    time.sleep(60)
atomic.os.fsync = hang  # the data is in the temp file; the rename never comes
atomic.atomic_write_bytes(sys.argv[2], b"x" * 100000)
"""


def test_a_writer_killed_mid_write_leaves_a_temp_file_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "loops.pt"
    save_loop_checkpoint(Tiny(), target)
    previous = target.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(REPO / "canvas_engineering" / "_atomic.py"), str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    left = temp_files_of(target)
    assert len(left) == 1 and f"-{proc.pid}-" in left[0].name
    assert target.read_bytes() == previous  # the killed write never replaced the file
    load_loop_checkpoint(Tiny(), target)

    atomic_write_bytes(target, previous)  # the next write to the same target cleans up
    assert temp_files_of(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loops.pt"]


def test_a_write_into_a_missing_folder_creates_it_and_a_failure_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "loops.pt"
    save_loop_checkpoint(Tiny(), target)
    load_loop_checkpoint(Tiny(), target)
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "loops.pt"
    with pytest.raises(NotADirectoryError, match=re.escape(f"{tmp_path / 'file'} is not a folder")) as info:
        atomic_write_bytes(blocked, b"x")
    assert info.value.filename == str(blocked)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_bytes(tmp_path / "dir.pt", b"x")
    assert info.value.filename == str(tmp_path / "dir.pt")
    assert temp_files_of(tmp_path / "dir.pt") == []


# -- CanvasModule.load_from_checkpoint ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lightning_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    torch.manual_seed(0)
    model = CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2})
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, tiny_loader(4))
    path = tmp_path_factory.mktemp("lightning") / "model.ckpt"
    trainer.save_checkpoint(path)
    yield path


def _module_refuses(path: Path, match: str) -> CheckpointFileError:
    with pytest.raises(CheckpointFileError, match=match) as info:
        CanvasModule.load_from_checkpoint(path)
    assert f"CanvasModule.load_from_checkpoint: {str(path)!r}" in str(info.value)
    assert info.value.path == str(path)
    return info.value


def test_a_lightning_checkpoint_still_loads(lightning_checkpoint: Path) -> None:
    loaded = CanvasModule.load_from_checkpoint(lightning_checkpoint)
    state = torch.load(lightning_checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(TypeError, match=r"cannot be called on an instance"):
        loaded.load_from_checkpoint(lightning_checkpoint)


def test_a_loop_checkpoint_given_to_load_from_checkpoint_says_what_to_use(original: bytes, tmp_path: Path) -> None:
    path = tmp_path / "loops.pt"
    path.write_bytes(original)
    _module_refuses(path, r"is a loop checkpoint .*restore it with canvas_engineering\.load_loop_checkpoint\(model,")


def test_files_that_are_not_lightning_checkpoints_are_refused_by_name(tmp_path: Path) -> None:
    _module_refuses(tmp_path / "absent.ckpt", r"no such file")
    (tmp_path / "folder.ckpt").mkdir()
    _module_refuses(tmp_path / "folder.ckpt", r"is a folder, not a checkpoint file")
    (tmp_path / "text.ckpt").write_text("hello")
    _module_refuses(tmp_path / "text.ckpt", r"not a PyTorch checkpoint")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    _module_refuses(tmp_path / "empty.ckpt", r"not a PyTorch checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    _module_refuses(tmp_path / "plain.ckpt", r"not a Lightning checkpoint \(it has no 'state_dict' key\)")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    _module_refuses(tmp_path / "bare.ckpt", r"no 'pytorch-lightning_version' key")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_a_truncated_lightning_checkpoint_is_refused(
    lightning_checkpoint: Path, tmp_path: Path, fraction: float
) -> None:
    data = lightning_checkpoint.read_bytes()
    path = tmp_path / "short.ckpt"
    path.write_bytes(data[: int(len(data) * fraction)])
    _module_refuses(path, r"damaged")


def test_a_lightning_checkpoint_with_nan_weights_is_refused_unless_allowed(
    lightning_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = torch.load(lightning_checkpoint, weights_only=False)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.numel() > 3)
    checkpoint["state_dict"][name].view(-1)[:3] = float("nan")
    path = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, path)
    _module_refuses(path, rf"{re.escape(repr(name))} holds 3 non-finite values .*allow_non_finite=True")
    loaded = CanvasModule.load_from_checkpoint(path, allow_non_finite=True)
    assert int(torch.isnan(loaded.state_dict()[name]).sum()) == 3
