"""Benchmark: CanvasModule training throughput, tiled canvas attention vs dense masked attention.

Both runs train the quick-start network (canvas DiT on bouncing-ball data, same seed, same
steps); the only difference is the attention kernel: ``tiled`` (tile-packed SDPA over the
allowed tiles) or ``dense`` (SDPA with each group's full additive mask, the reference).
Reported: canvas positions per second (min and median over logged windows), wall time to
the final loss, and the final validation loss.

    python benchmarks/train.py [--steps 200] [--write-readme]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_note, write_readme_section


def run(kernel: str, steps: int) -> dict:
    """Train the quick-start model ``steps`` steps with one attention ``kernel``; return its throughput."""
    import lightning.pytorch as pl
    import torch
    from canvas_engineering.datamodules import BouncingBallsDataModule

    from canvas_engineering import CanvasModule

    pl.seed_everything(0)
    dm = BouncingBallsDataModule()
    model = CanvasModule(dm.schema, dm.region_formats, backbone_config={"depth": 3, "n_heads": 4, "kernel": kernel},
                         max_loops=1, lr=1e-3, warmup_steps=20)
    times: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, *args) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            times.append(time.perf_counter() - self.t)

    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False, callbacks=[Clock()],
                         limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(model, dm)
    wall = time.perf_counter() - start
    val = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = val.validate(model, dm, verbose=False)[0]
    n = model.layout.num_positions * dm.batch_size
    rates = [n / t for t in times[5:]]  # skip warm-up steps
    return {"kernel": kernel, "min": min(rates), "median": statistics.median(rates), "wall": wall,
            "val_loss": result["val/loss"], "threads": torch.get_num_threads()}


def main() -> None:
    """Run both kernels and print or write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    rows = [run(k, args.steps) for k in ("tiled", "dense")]
    table = [f"| attention kernel | positions / s (min / median) | wall time for {args.steps} steps | final val loss |",
             "|---|---:|---:|---:|"]
    for r in rows:
        table.append(
            f"| {r['kernel']} | {r['min']:,.0f} / {r['median']:,.0f} | {r['wall']:.1f} s | {r['val_loss']:.4f} |"
        )
    text = "\n".join(table) + (
        "\n\nQuick-start network (canvas DiT depth 3, d_model 64, batch 16, 8x5x4 canvas). "
        f"Machine: {machine_note()}."
    )
    print(text)
    if args.write_readme:
        write_readme_section("train", text)


if __name__ == "__main__":
    main()
