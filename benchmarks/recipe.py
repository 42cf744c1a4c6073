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
the wall time of training, as mean ± std over seeds (the chosen recipe gets more seeds).

    python benchmarks/recipe.py [--seeds 2] [--chosen-seeds 3] [--jobs 2] [--write-readme] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fit_and_validate, machine_note, write_readme_section

BASE: dict[str, Any] = {
    "backbone": "canvas_dit",
    "backbone_config": {"depth": 3, "n_heads": 4},
    "max_loops": 3,
    "lr": 1e-3,
    "warmup_steps": 20,
}
PREDICT = {"noise_scheduler": "flow", "timestep_sampling": "logit_normal", "logit_mean": 6.0, "logit_std": 0.1}
#: name -> (CanvasModule options over BASE, datamodule options, what the candidate changes)
CANDIDATES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "before": (
        {"noise_scheduler": "ddpm", "num_inference_steps": 20,
         "backbone_config": {"depth": 3, "n_heads": 4, "input_projection": False}},
        {},
        "the 0.1 quick start: DDPM, uniform t, 20 steps, no input projection",
    ),
    "+input projection": (
        {"noise_scheduler": "ddpm", "num_inference_steps": 20},
        {},
        "learned Linear on the content before the position encodings",
    ),
    "+flow, logit-normal t (1.5), 10 steps": (
        {"noise_scheduler": "flow", "timestep_sampling": "logit_normal", "logit_mean": 1.5, "num_inference_steps": 10},
        {},
        "rectified flow, noise levels skewed high, 10 Euler steps",
    ),
    "+flow at full noise, 1 step": (
        {**PREDICT, "num_inference_steps": 1},
        {},
        "trained at full noise only: a one-step posterior-mean forecaster",
    ),
    "+cosine lr decay": (
        {**PREDICT, "num_inference_steps": 1, "lr_decay": "cosine"},
        {},
        "learning rate to 0 at the last step",
    ),
    "+local video attention": (
        {**PREDICT, "num_inference_steps": 1, "lr_decay": "cosine"},
        {"video_attention": "local_attention"},
        "video reads video through local_attention (3 x 3 patches)",
    ),
    "+lr 2e-3": (
        {**PREDICT, "num_inference_steps": 1, "lr_decay": "cosine", "lr": 2e-3},
        {"video_attention": "local_attention"},
        "twice the learning rate (peak, before the cosine decay)",
    ),
    "+horizon weights 4, 2, 1": (
        {**PREDICT, "num_inference_steps": 1, "lr_decay": "cosine", "lr": 2e-3, "horizon_weights": [4.0, 2.0, 1.0]},
        {"video_attention": "local_attention"},
        "loss weight 4, 2, 1, 1 on the 1st-4th predicted frame",
    ),
}
CHOSEN = "+horizon weights 4, 2, 1"
REGIONS = ("video", "action", "reward")
FRAMES = (4, 5, 6, 7)


def run_one(job: tuple[str, int, int, bool]) -> dict[str, Any]:
    """Train one candidate (``(name, seed, steps, quick)``) and return its validation metrics."""
    import lightning.pytorch as pl
    import torch
    from canvas_engineering.callbacks import AttentionSharpening, LoopCurriculum
    from canvas_engineering.datamodules import BouncingBallsDataModule

    from canvas_engineering import CanvasModule

    name, seed, steps, quick = job
    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    options, data, _ = CANDIDATES[name]
    sizes = {"n_train": 32, "n_val": 16, "batch_size": 8, "d_model": 32} if quick else {"n_val": 128, "batch_size": 16}
    dm = BouncingBallsDataModule(**sizes, **data)  # the data is fixed (seed 0); the seed varies the model
    model = CanvasModule(dm.schema, dm.region_formats, **{**BASE, **options, "sample_metric_batches": 1_000})
    callbacks = [LoopCurriculum(), AttentionSharpening(beta_min=1.0, beta_max=2.0)]
    metrics, wall = fit_and_validate(model, dm, steps, callbacks)
    return {"name": name, "seed": seed, "wall": wall, "metrics": metrics}


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


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def render(result: dict[str, Any]) -> str:
    """Build the README section: one row per candidate (mean ± std over seeds), then the baselines."""
    runs = result["runs"]
    first = runs[0]["metrics"]
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        f"Measured with `python benchmarks/recipe.py --write-readme` on {result['machine']}: {result['steps']} "
        f"training steps, batch 16, 128 validation clips (the data is fixed; seeds {', '.join(map(str, seeds))} vary "
        f"the model and its noise), each run on 1 thread, {result['jobs']} at a time; "
        f"total {result['total'] / 60:.0f} min. "
        "Sampled-future MSE per region is the mean over the 4 predicted frames (mean ± std over seeds); "
        "\"cells\" counts the 12 (region, frame) cells where the sample beats both `last` and `mean`.",
        "",
        "| candidate | change | video MSE | action MSE | reward MSE | video SSIM | cells | train time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_, _, change) in CANDIDATES.items():
        mine = [summarise(r) for r in runs if r["name"] == name]
        if not mine:
            continue
        cells = [_spread([m[key] for m in mine]) for key in (*REGIONS, "ssim")]
        wins = "/".join(str(m["wins"]) for m in mine)
        wall = statistics.mean(m["wall"] for m in mine)
        lines.append(f"| {name} | {change} | " + " | ".join(cells) + f" | {wins} | {wall:.0f} s |")
    for base in ("last", "mean", "constant_velocity"):
        cells = [first.get(f"val/baseline/{base}/{r}/mse") for r in REGIONS]
        ssim = first.get(f"val/baseline/{base}/video/ssim")
        lines.append(
            f"| baseline: {base} | same clips | "
            + " | ".join(f"{c:.4f}" if c is not None else "–" for c in cells)
            + f" | {ssim:.3f} | – | – |"
        )
    chosen = [r for r in runs if r["name"] == CHOSEN]
    if chosen:
        lines += ["", f"Per predicted frame, `{CHOSEN}` (mean over seeds) against the baselines:", ""]
        lines.append("| region | source | " + " | ".join(f"t={t}" for t in FRAMES) + " |")
        lines.append("|---|---|" + "---:|" * len(FRAMES))
        for region in REGIONS:
            for source in ("sample", "last", "mean", "constant_velocity"):
                key = "val/sample" if source == "sample" else f"val/baseline/{source}"
                values = [[r["metrics"].get(f"{key}/{region}/mse/frame_{t}") for r in chosen] for t in FRAMES]
                if any(v is None for row in values for v in row):
                    continue
                cells = [f"{statistics.mean(v):.4f}" for v in values]
                lines.append(f"| {region} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the ablation; return ``{"runs": [...], ...}``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per candidate")
    parser.add_argument("--chosen-seeds", type=int, default=3, help="seeds of the chosen recipe")
    parser.add_argument("--steps", type=int, default=768)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (1 thread each)")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--out", default="runs/benchmarks/recipe.json")
    parser.add_argument(
        "--merge", action="store_true", help="keep the runs saved in --out of candidates not re-run (with --only)"
    )
    args = parser.parse_args(argv)
    steps = 4 if args.quick else args.steps
    names = [CHOSEN, "before"] if args.quick else (args.only or list(CANDIDATES))
    jobs = [(n, s, steps, args.quick) for n in names for s in range(1 if args.quick else args.seeds)]
    if CHOSEN in names and not args.quick:
        jobs += [(CHOSEN, s, steps, args.quick) for s in range(args.seeds, args.chosen_seeds)]
    start = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for run in pool.map(run_one, jobs):
            s = summarise(run)
            print(
                f"{run['name']} seed {run['seed']}: video {s['video']:.4f} action {s['action']:.4f} "
                f"reward {s['reward']:.4f} cells {s['wins']}/12 ({run['wall']:.0f} s)",
                flush=True,
            )
            runs.append(run)
    total = time.perf_counter() - start
    out = Path(args.out)
    if args.merge and out.exists():
        saved = json.loads(out.read_text())
        kept = [r for r in saved["runs"] if r["name"] not in names and r["name"] in CANDIDATES]
        runs = sorted(kept + runs, key=lambda r: (list(CANDIDATES).index(r["name"]), r["seed"]))
        total += saved.get("total", 0.0)
    result = {"runs": runs, "steps": steps, "jobs": args.jobs, "machine": machine_note(), "total": total}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    text = render(result)
    print(text)
    if args.write_readme:
        write_readme_section("recipe", text)
    return result


if __name__ == "__main__":
    main()
