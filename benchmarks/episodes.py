"""Benchmark: windows per second that EpisodeDataModule reads from LeRobot parquet + mp4 on this CPU.

A generated dataset (written by the benchmark into a temporary folder, seeded): 60 episodes
of 60 frames at 30 fps, a 64 x 64 camera stored as mp4 (moving gradient pictures), a
14-dimensional state and a 7-dimensional action, in both layouts (v3.0: 20 episodes per
file; v2.1: a file per episode). Windows of 8 + 4 frames, stride 1, the camera at 15 Hz
(period 2). Measured: one pass of the shuffled training DataLoader (batch 32), normalised,
with 0 and 2 workers, min and median over repeated passes (each pass starts with cold
per-process caches). The reader seeks to each window's first frame and decodes only the
window. Baseline in the same run (v2.1, one mp4 per episode): decoding each episode's video
from its first frame up to the window, the naive reader.

    python benchmarks/episodes.py [--write-readme] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, write_readme_section

EPISODES, FRAMES, SIDE, FPS = 60, 60, 64, 30


def make_dataset(root: Path, version: str) -> Path:
    """Write the benchmark's dataset in one layout."""
    from canvas_engineering.datamodules import write_lerobot_dataset

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    episodes = []
    for _ in range(EPISODES):
        phase = rng.uniform(0, 2 * np.pi)
        t = np.arange(FRAMES)[:, None, None]
        grey = (127 + 100 * np.sin(0.1 * xs[None] + 0.07 * ys[None] + 0.2 * t + phase)).astype(np.uint8)
        episodes.append({
            "observation.images.top": np.repeat(grey[..., None], 3, axis=-1),
            "observation.state": rng.normal(size=(FRAMES, 14)).astype(np.float32),
            "action": rng.normal(size=(FRAMES, 7)).astype(np.float32),
        })
    return write_lerobot_dataset(root, episodes, FPS, version=version, episodes_per_file=20)


def _decode_from_start(path: str, from_timestamp: float, frames: int, fps: float) -> np.ndarray:
    """Decode the file from its first frame up to the window and keep the window (the naive reader)."""
    from canvas_engineering.datamodules import lerobot_source

    skip = int(round(from_timestamp * fps))
    return lerobot_source.decode_video_segment_uncached(path, 0.0, skip + frames, fps)[skip:]


def one_pass(root: Path, workers: int, cached: bool) -> tuple[float, int]:
    """Seconds for one pass over the training windows, and the number of windows."""
    from canvas_engineering.datamodules import EpisodeDataModule, lerobot_source

    lerobot_source.decode_video_segment.cache_clear()
    lerobot_source._table.cache_clear()
    original = lerobot_source.decode_video_segment
    lerobot_source.decode_video_segment_uncached = original.__wrapped__  # type: ignore[attr-defined]
    if not cached:
        lerobot_source.decode_video_segment = _decode_from_start  # type: ignore[assignment]
    try:
        dm = EpisodeDataModule(root=str(root), history=8, horizon=4, stride=2, batch_size=32, num_workers=workers,
                               rates={"observation.images.top": 15}, val_fraction=0.05, test_fraction=0.05)
        loader = dm.train_dataloader()
        start = time.perf_counter()
        n = 0
        for batch in loader:
            n += int(batch["action"].shape[0])
        return time.perf_counter() - start, n
    finally:
        lerobot_source.decode_video_segment = original


def main() -> None:
    """Measure every layout x reader x workers case and print (or write) the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in ("v3.0", "v2.1"):
            root = make_dataset(Path(tmp) / version, version)
            size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            cases = ((False, 0), (True, 0), (True, 2)) if version == "v2.1" else ((True, 0), (True, 2))
            for cached, workers in cases:
                repeat = 1 if not cached else args.repeat  # the naive reader takes minutes
                times, n = [], 0
                for _ in range(repeat):
                    seconds, n = one_pass(root, workers, cached)
                    times.append(seconds)
                rate = [n / t for t in times]
                reader = "seek to the window" if cached else "baseline: decode from the episode's first frame"
                rows.append((version, reader, workers, n, max(rate), statistics.median(rate), size))
                print(f"{version} {reader:<28} workers {workers}: {n} windows, max {max(rate):8.1f} / "
                      f"median {statistics.median(rate):8.1f} windows/s", flush=True)
    table = [
        "| layout | reader | workers | windows per pass | windows/s (best / median) |",
        "|---|---|---:|---:|---:|",
    ]
    for version, reader, workers, n, best, med, _ in rows:
        table.append(f"| {version} | {reader} | {workers} | {n:,} | {best:,.0f} / {med:,.0f} |")
    text = "\n".join(table) + (
        f"\n\n{EPISODES} episodes x {FRAMES} frames at {FPS} fps, {SIDE}x{SIDE} mp4 camera at 15 Hz (period 2), "
        f"14-d state, 7-d action; windows of 8 + 4 frames, stride 2, batch 32, shuffled; dataset "
        f"{rows[0][6] / 2**20:.1f} MiB on disk. Machine: {machine_note()}. "
        "`python benchmarks/episodes.py --write-readme`."
    )
    print(text)
    if args.write_readme:
        write_readme_section("episodes", text)


if __name__ == "__main__":
    main()
