"""Shared helpers for the benchmarks: timing, peak memory, machine notes, README tables."""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def rss_bytes() -> int:
    """Return the current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_it(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> tuple[float, float]:
    """(min, median) seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs (``torch.utils.benchmark``).

    Runs with all of torch's threads (``Timer`` defaults to one).
    """
    import torch
    from torch.utils import benchmark

    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    if warmup:
        timer.timeit(warmup)
    times = [timer.timeit(1).mean for _ in range(repeat)]
    return min(times), statistics.median(times)


def machine_note() -> str:
    """One line describing the machine and its load."""
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load}, {time.strftime('%Y-%m-%d')}"
    )


def write_readme_section(name: str, text: str) -> None:
    """Replace the text between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` in README.md."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    readme = README.read_text()
    if start not in readme:
        msg = f"README.md has no {start} marker"
        raise SystemExit(msg)
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    README.write_text(pattern.sub(lambda _: f"{start}\n{text.strip()}\n{end}", readme))


def fit_and_validate(
    model: object, dm: object, steps: int, callbacks: list | None = None
) -> tuple[dict[str, float], float]:
    """Train ``steps`` steps on the CPU with a fresh quiet Trainer, then validate once.

    No logger, no checkpoints, no sanity check, no validation during training; a progress bar
    only on a terminal. Returns ``(validation metrics, seconds of training)``.
    """
    import sys

    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10_000,
        enable_progress_bar=sys.stderr.isatty(),
        callbacks=list(callbacks or []),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    out = trainer.validate(model, datamodule=dm, verbose=False)[0]
    return {k: float(v) for k, v in out.items()}, seconds
