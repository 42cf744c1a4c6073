"""Ablation: which training recipe makes the quick start's *sampled* future beat the baselines.

Every candidate trains the quick-start canvas (``BouncingBallsDataModule`` defaults: 8 frames of
16 x 16 bouncing balls with pushes and reward, the last 4 frames predicted) with the
quick-start model (canvas DiT, depth 3, 4 heads, 3 loops ramped by ``LoopCurriculum``,
``AttentionSharpening``), and differs in one or two ``CanvasModule`` options. After training,
``trainer.validate`` samples the future of 128 validation clips with ``CanvasModule.sample``
and logs, per region and predicted frame, the MSE of the sample and of the baselines on the
same clips: ``last`` (repeat the last context frame), ``mean`` (training-data mean),
``constant_velocity`` (balls continued at their true last velocity; video and reward).

Reported per candidate: the sampled-future MSE per region (mean over the predicted frames),
how many of the 12 (region, frame) cells beat both ``last`` and ``mean``, the video SSIM, and
the wall time of training. The chosen recipe is run at ``--seeds`` seeds (mean ± std).

    python benchmarks/recipe.py [--seeds 3] [--write-readme] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, write_readme_section  # noqa: E402

BASE: dict[str, Any] = {
    "backbone": "canvas_dit",
    "backbone_config": {"depth": 3, "n_heads": 4},
    "max_loops": 3,
    "lr": 1e-3,
    "warmup_steps": 20,
}
#: name -> (CanvasModule options over BASE, what the candidate changes)
CANDIDATES: dict[str, tuple[dict[str, Any], str]] = {
    "before": (
        {"noise_scheduler": "ddpm", "num_inference_steps": 20, "backbone_config": {"depth": 3, "n_heads": 4, "input_projection": False}},
        "0.1 quick start: DDPM, x0 target, uniform t, 20 steps, no input projection",
    ),
    "+input projection": (
        {"noise_scheduler": "ddpm", "num_inference_steps": 20},
        "learned Linear on the content before the position encodings are added",
    ),
    "+flow, logit-normal t (1.5)": (
        {"noise_scheduler": "flow", "timestep_sampling": "logit_normal", "logit_mean": 1.5, "num_inference_steps": 1},
        "rectified flow, noise levels skewed high, 1 Euler step",
    ),
    "+prediction regime": (
        {"noise_scheduler": "flow", "timestep_sampling": "logit_normal", "logit_mean": 6.0, "logit_std": 0.1, "num_inference_steps": 1},
        "flow trained at full noise only (a one-step forecaster), 1 step",
    ),
}
CHOSEN = "+prediction regime"
REGIONS = ("video", "action", "reward")
FRAMES = (4, 5, 6, 7)


def run_one(name: str, seed: int, steps: int, quick: bool) -> dict[str, Any]:
    """Train one candidate and return its validation metrics."""
    import lightning.pytorch as pl
    import torch

    from canvas_engineering import CanvasModule
    from canvas_engineering.callbacks import AttentionSharpening, LoopCurriculum
    from canvas_engineering.datamodules import BouncingBallsDataModule

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pl.seed_everything(seed, verbose=False)
    sizes = {"n_train": 32, "n_val": 16, "batch_size": 8, "d_model": 32} if quick else {"n_val": 128, "batch_size": 16}
    dm = BouncingBallsDataModule(seed=seed, **sizes)
    options = {**BASE, **CANDIDATES[name][0], "sample_metric_batches": 1_000}
    model = CanvasModule(dm.schema, dm.region_formats, **options)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10_000,
        callbacks=[LoopCurriculum(), AttentionSharpening(beta_min=1.0, beta_max=2.0)],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - start
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    return {"name": name, "seed": seed, "wall": wall, "metrics": {k: float(v) for k, v in metrics.items()}}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Region means, the count of (region, frame) cells beating both baselines, and SSIM."""
    m = run["metrics"]
    wins = 0
    for region in REGIONS:
        for t in FRAMES:
            s = m.get(f"val/sample/{region}/mse/frame_{t}")
            last = m.get(f"val/baseline/last/{region}/mse/frame_{t}")
            mean = m.get(f"val/baseline/mean/{region}/mse/frame_{t}")
            if None not in (s, last, mean) and s < last and s < mean:
                wins += 1
    return {
        **{region: m.get(f"val/sample/{region}/mse") for region in REGIONS},
        "ssim": m.get("val/sample/video/ssim"),
        "wins": wins,
        "wall": run["wall"],
    }


def render(result: dict[str, Any]) -> str:
    """The README section."""
    runs = result["runs"]
    first = runs[0]["metrics"]
    lines = [
        f"Measured with `python benchmarks/recipe.py` on {result['machine']}; {result['steps']} training steps, "
        f"batch 16, 128 validation clips, seed 0 per candidate; total {result['total']:.0f} s.",
        "",
        "| candidate | change | video MSE | action MSE | reward MSE | video SSIM | cells beating last and mean (of 12) | train time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        if run["seed"] != 0:
            continue
        s = summarise(run)
        lines.append(
            f"| {run['name']} | {CANDIDATES[run['name']][1]} | {s['video']:.4f} | {s['action']:.4f} | {s['reward']:.4f} "
            f"| {s['ssim']:.3f} | {s['wins']} | {s['wall']:.0f} s |"
        )
    for base in ("last", "mean", "constant_velocity"):
        cells = [first.get(f"val/baseline/{base}/{r}/mse") for r in REGIONS]
        ssim = first.get(f"val/baseline/{base}/video/ssim")
        lines.append(
            f"| baseline: {base} | same clips | "
            + " | ".join(f"{c:.4f}" if c is not None else "–" for c in cells)
            + f" | {ssim:.3f} | – | – |"
        )
    chosen = [summarise(r) for r in runs if r["name"] == CHOSEN]
    if len(chosen) > 1:
        lines += ["", f"The chosen recipe (`{CHOSEN}`) over {len(chosen)} seeds (mean ± std):", ""]
        cells = []
        for key in (*REGIONS, "ssim", "wins"):
            values = [c[key] for c in chosen]
            cells.append(f"{key} {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
        lines.append("; ".join(cells) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the ablation; return ``{"runs": [...], ...}``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the chosen recipe")
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--out", default="runs/benchmarks/recipe.json")
    args = parser.parse_args(argv)
    steps = 4 if args.quick else args.steps
    names = [CHOSEN, "before"] if args.quick else list(CANDIDATES)
    start = time.perf_counter()
    runs = []
    jobs = [(n, 0) for n in names] + [(CHOSEN, s) for s in range(1, args.seeds)]
    for name, seed in jobs:
        run = run_one(name, seed, steps, args.quick)
        s = summarise(run)
        print(f"{name} seed {seed}: video {s['video']:.4f} action {s['action']:.4f} reward {s['reward']:.4f} wins {s['wins']}/12 ({run['wall']:.0f} s)", flush=True)
        runs.append(run)
    result = {"runs": runs, "steps": steps, "machine": machine_note(), "total": time.perf_counter() - start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    text = render(result)
    print(text)
    if args.write_readme:
        write_readme_section("recipe", text)
    return result


if __name__ == "__main__":
    main()
