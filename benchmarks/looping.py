"""Benchmark: whether looping (running the same blocks several times) helps a canvas DiT that learns.

Every model is a :class:`~canvas_engineering.CanvasModule` on a ``BouncingBallsDataModule``
canvas with one shared recipe, the quick start's (:data:`RECIPE`: rectified flow trained at
full noise, one Euler step, AdamW lr 1e-3 with 20 warm-up steps and cosine decay; video reads
video through ``local_attention``, :data:`DATA`) and a
``canvas_dit`` backbone of 4 heads; every run of a seed sees the same data (the data module's
``seed`` and ``lightning.seed_everything`` both take the run's seed).

**What is measured** is not the training loss: after training, ``trainer.validate`` samples
the future of every validation clip with :meth:`CanvasModule.sample` (one Euler step)
and the module logs ``val/sample/video/mse``, the MSE of the sampled frames against the true
ones, averaged over the predicted frames (also per frame, ``.../frame_{t}``). The same batches
give three baselines that need no model: ``last`` (repeat the last context frame), ``mean``
(the training split's mean frame) and ``constant_velocity`` (each ball continued from its
true last position and velocity, no pushes). Sampled reward and action MSEs are recorded too.

Studies (each condition at ``--seeds`` seeds; means with 95% t confidence intervals over
seeds, two-sided Welch t-tests from ``scipy.stats``):

* ``loops``: ``loops-k`` (k = 1..4), the quick-start canvas (8 frames, 4 given, 4 predicted),
  2 blocks each run k times (``max_loops=k``, all k loops active from the first step, no
  curriculum). ``loops-1`` is the plain 2-block model; each ``loops-k`` is tested against it.
* ``freeze``: a 2-block model with ``max_loops=3`` is pretrained at one loop for
  ``--pretrain-steps`` (``pretrained``), then trained ``--steps`` more at 3 loops with a fresh
  optimiser and: ``freeze-full`` (only the loop embeddings, ``LoopedBlockWrapper.loop_embeddings``,
  train), ``freeze-half`` (the first half of the blocks frozen; their loop embeddings, the
  other blocks, the rest of the backbone and the region codecs train) or ``freeze-none``
  (everything trains). Control: the same pretrained model trained ``--steps`` more at one
  loop (``pretrained-1loop``); each freeze level is tested against it.
* ``long``: a long-horizon task where iteration should matter: 12 frames, 4 given, 8
  predicted, causal-temporal topology (each block reads its own and the previous frame, so
  information moves at most one frame per block pass), one block run k = 1, 2, 4 times:
  with k passes a predicted frame sees at most k frames back. Per-frame sampled MSEs are
  reported; each ``long-k`` is tested against ``long-1``.

Results go to ``runs/benchmarks/looping.json`` (every run's numbers) and, with
``--write-readme``, to the ``looping`` section of README.md.

    python benchmarks/looping.py [--seeds 5] [--jobs 2] [--write-readme] [--quick]
    python benchmarks/looping.py --from-json runs/benchmarks/looping.json [--write-readme]   # re-render only

``--quick`` is a smoke test (4 steps, tiny data, 2 seeds, loops 1-2; numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fit_and_validate, machine_note, write_readme_section

#: The shared CanvasModule recipe of every run (change it here).
RECIPE: dict[str, Any] = {
    "noise_scheduler": "flow",
    "timestep_sampling": "logit_normal",
    "logit_mean": 6.0,
    "logit_std": 0.1,
    "num_inference_steps": 1,
    "sample_metric_steps": 1,
    "lr": 1e-3,
    "warmup_steps": 20,
    "lr_decay": "cosine",
}
#: The shared data-module options (the quick start's canvas: video reads video locally).
DATA: dict[str, Any] = {"video_attention": "local_attention"}
N_HEADS = 4
DEFAULTS: dict[str, Any] = {
    "steps": 400, "pretrain_steps": 300, "n_train": 512, "n_val": 64, "batch_size": 16, "d_model": 64,
    "depth": 2, "loops": [1, 2, 3, 4], "freeze_loops": 3, "freeze_levels": ["full", "half", "none"],
    "long_depth": 1, "long_loops": [1, 2, 4],
}
QUICK: dict[str, Any] = {
    **DEFAULTS, "steps": 4, "pretrain_steps": 4, "n_train": 16, "n_val": 8, "batch_size": 8, "d_model": 32,
    "loops": [1, 2], "long_loops": [1, 2],
}
#: The long-horizon task's data module arguments (8 predicted frames).
LONG_TASK: dict[str, Any] = {"frames": 12, "t_current": 4, "topology": "causal_temporal"}
STUDIES = ("loops", "freeze", "long")
BASELINES = ("last", "mean", "constant_velocity")
LOOP_PARAMETERS = ("loop_embeddings", "stream_embeddings")  # LoopedBlockWrapper's own parameters
VIDEO = "val/sample/video/mse"


# -- statistics (scipy.stats) ---------------------------------------------------------------


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and its Student-t confidence interval (``nan`` bounds for one value)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    sem = float(stats.sem(x))
    if sem == 0.0:
        return mean, mean, mean
    lo, hi = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``).

    ``nan`` with fewer than two values in a group; with no spread in either group, 1.0 when
    the means are equal and 0.0 otherwise (scipy gives ``nan`` there).
    """
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.var(a) == 0 and np.var(b) == 0:
        return 1.0 if float(np.mean(a)) == float(np.mean(b)) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# -- models and runs ------------------------------------------------------------------------


def build(job: dict[str, Any]):
    """Build the data module and model of a job (seeded by the job's seed)."""
    import lightning
    from canvas_engineering.datamodules import BouncingBallsDataModule

    from canvas_engineering import CanvasModule

    cfg, seed = job["cfg"], job["seed"]
    task = LONG_TASK if job["study"] == "long" else {}
    dm = BouncingBallsDataModule(
        n_train=cfg["n_train"], n_val=cfg["n_val"], n_test=8, batch_size=cfg["batch_size"], seed=seed,
        d_model=cfg["d_model"], **DATA, **task,
    )
    lightning.seed_everything(seed, verbose=False)
    model = CanvasModule(
        dm.schema,
        dm.region_formats,
        backbone="canvas_dit",
        backbone_config={"depth": job["depth"], "n_heads": N_HEADS},
        max_loops=job["max_loops"],
        sample_metric_batches=math.ceil(cfg["n_val"] / cfg["batch_size"]),  # the whole validation split
        **RECIPE,
    )
    return dm, model


def is_loop_parameter(name: str) -> bool:
    """Whether a parameter name is a LoopedBlockWrapper's loop embedding."""
    return name.rsplit(".", 1)[-1] in LOOP_PARAMETERS


def apply_freeze(model: Any, level: str) -> None:
    """Set ``requires_grad`` for a freeze level: ``full``, ``half`` or ``none`` (see the module docstring)."""
    if level not in ("full", "half", "none"):
        msg = f"freeze level {level!r} must be 'full', 'half' or 'none'"
        raise ValueError(msg)
    for name, p in model.named_parameters():
        p.requires_grad_(level != "full" or is_loop_parameter(name))
    if level == "half":
        blocks = model.backbone.blocks
        for block in list(blocks)[: len(blocks) // 2]:
            for name, p in block.named_parameters():
                p.requires_grad_(is_loop_parameter(name))


def trainable(model: Any) -> int:
    """Count the parameters that train."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train and validate one job (a run, a pretraining or a continuation); return its record."""
    import logging
    import warnings

    import lightning
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|Tensor Cores).*")
    try:
        dm, model = build(job)
        if job["kind"] == "continue":
            model.load_state_dict(torch.load(job["state"], weights_only=True))
            lightning.seed_everything(job["seed"], verbose=False)  # the same noise and batches for every level
        model.set_loops(job["loops"])
        if job.get("freeze"):
            apply_freeze(model, job["freeze"])
        metrics, seconds = fit_and_validate(model, dm, job["steps"])
        if job["kind"] == "pretrain":
            torch.save(model.state_dict(), job["state"])
    finally:
        torch.set_num_threads(threads)
    keys = ("study", "condition", "seed", "depth", "loops", "max_loops", "steps", "freeze")
    return {
        **{k: job.get(k) for k in keys}, "trainable_params": trainable(model), "video_mse": metrics[VIDEO],
        "seconds": seconds, "metrics": metrics,
    }


def plan(cfg: dict[str, Any], seeds: int, studies: Sequence[str], state_dir: str) -> list[dict[str, Any]]:
    """List the independent jobs: loop-count and long-horizon runs, and one pretraining per seed."""
    jobs = []
    for seed in range(seeds):
        base = {"cfg": cfg, "seed": seed, "freeze": None}
        if "loops" in studies:
            for k in cfg["loops"]:
                jobs.append({**base, "kind": "run", "study": "loops", "condition": f"loops-{k}", "depth": cfg["depth"],
                             "loops": k, "max_loops": k, "steps": cfg["steps"]})
        if "long" in studies:
            for k in cfg["long_loops"]:
                jobs.append({**base, "kind": "run", "study": "long", "condition": f"long-{k}",
                             "depth": cfg["long_depth"], "loops": k, "max_loops": k, "steps": cfg["steps"]})
        if "freeze" in studies:
            jobs.append({**base, "kind": "pretrain", "study": "freeze", "condition": "pretrained",
                         "depth": cfg["depth"], "loops": 1, "max_loops": cfg["freeze_loops"],
                         "steps": cfg["pretrain_steps"], "state": str(Path(state_dir) / f"pretrained-{seed}.pt")})
    return jobs


def continuations(pretrain: dict[str, Any]) -> list[dict[str, Any]]:
    """List the jobs a finished pretraining unlocks: each freeze level at 3 loops, and the 1-loop control."""
    cfg = pretrain["cfg"]
    base = {**pretrain, "kind": "continue", "steps": cfg["steps"]}
    jobs = [{**base, "condition": f"freeze-{lvl}", "loops": cfg["freeze_loops"], "freeze": lvl}
            for lvl in cfg["freeze_levels"]]
    return [*jobs, {**base, "condition": "pretrained-1loop", "loops": 1, "freeze": "none"}]


def cost(job: dict[str, Any]) -> float:
    """Rough relative cost (steps x block passes x canvas size); pretraining first, it unlocks 4 jobs."""
    positions = 12 if job["study"] == "long" else 8
    work = job["steps"] * (0.5 + job["depth"] * job["loops"]) * positions**1.5
    return math.inf if job["kind"] == "pretrain" else work


def execute(jobs: list[dict[str, Any]], workers: int, done: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
    """Run ``jobs`` (and the continuations of pretrainings), costliest ready job first."""
    ready = list(jobs)

    def finish(job: dict[str, Any], record: dict[str, Any]) -> None:
        done(job, record)
        if job["kind"] == "pretrain":
            ready.extend(continuations(job))

    if workers <= 1:
        while ready:
            ready.sort(key=cost)
            job = ready.pop()
            finish(job, run_one(job))
        return
    import multiprocessing as mp

    running: dict[Future, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        while ready or running:
            ready.sort(key=cost)
            while ready and len(running) < workers:
                job = ready.pop()
                running[pool.submit(run_one, job)] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                finish(running.pop(future), future.result())


# -- report ---------------------------------------------------------------------------------


def _f(x: float, digits: int = 5) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def _rel(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f}%" if b else "n/a"


def condition_stats(runs: list[dict[str, Any]], reference: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Mean sampled video MSE with its 95% CI, baselines, other regions, per frame, p vs ``reference``."""
    video = [r["video_mse"] for r in runs]
    mean, lo, hi = mean_ci(video)

    def avg(key: str) -> float:
        values = [r["metrics"][key] for r in runs if key in r["metrics"]]
        return statistics.fmean(values) if values else math.nan

    frames = sorted({int(k.rsplit("_", 1)[1]) for r in runs for k in r["metrics"] if k.startswith(f"{VIDEO}/frame_")})
    per_frame = {"sample": {t: avg(f"{VIDEO}/frame_{t}") for t in frames}}
    for b in BASELINES:
        per_frame[b] = {t: avg(f"val/baseline/{b}/video/mse/frame_{t}") for t in frames}
    return {
        "n": len(runs), "mean": mean, "ci": [lo, hi], "values": video,
        "baselines": {b: avg(f"val/baseline/{b}/video/mse") for b in BASELINES},
        "reward_mse": avg("val/sample/reward/mse"), "action_mse": avg("val/sample/action/mse"),
        "per_frame": per_frame, "trainable_params": runs[0]["trainable_params"],
        "loops": runs[0]["loops"], "depth": runs[0]["depth"], "steps": runs[0]["steps"],
        "p": welch_p(video, [r["video_mse"] for r in reference]) if reference is not None else None,
    }


def _table(
    names: list[str], stat: dict[str, dict[str, Any]], ref: str, first: tuple[str, Callable[[str, dict], str]]
) -> list[str]:
    head = (
        f"| condition | {first[0]} | trainable params | steps | sampled video MSE, mean [95% CI] | n | vs {ref} | "
        f"Welch p vs {ref} | repeat last | training mean | constant velocity | reward MSE | action MSE |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        s = stat[name]
        is_ref = name == ref
        lines.append(
            f"| {name} | {first[1](name, s)} | {s['trainable_params']:,} | {s['steps']} | "
            f"{_f(s['mean'])} [{_f(s['ci'][0])}, {_f(s['ci'][1])}] | {s['n']} | "
            f"{'-' if is_ref or ref not in stat else _rel(s['mean'], stat[ref]['mean'])} | "
            f"{'-' if is_ref or s['p'] is None else _p(s['p'])} | "
            + " | ".join(_f(s["baselines"][b]) for b in BASELINES)
            + f" | {_f(s['reward_mse'], 4)} | {_f(s['action_mse'], 4)} |"
        )
    return lines


def _verdicts(names: list[str], stat: dict[str, dict[str, Any]], ref: str) -> str:
    parts = []
    if ref not in stat:  # the reference condition was not run
        return ""
    for name in names:
        if name == ref:
            continue
        s = stat[name]
        sig = "significant" if s["p"] is not None and s["p"] < 0.05 else "not significant"
        parts.append(f"{name} {_rel(s['mean'], stat[ref]['mean'])} (p = {_p(s['p'])}, {sig})")
    return "; ".join(parts)


def _learns(name: str, s: dict[str, Any]) -> str:
    """How a condition compares with the baselines (does the recipe learn?)."""
    b = s["baselines"]
    best = min(BASELINES, key=lambda k: b[k])
    beaten = [k.replace("_", " ") for k in BASELINES if s["mean"] < b[k]]
    return (
        f"{name} ({_f(s['mean'])}) beats {', '.join(beaten) if beaten else 'no baseline'}"
        f"; the best baseline is {best.replace('_', ' ')} ({_f(b[best])})"
    )


def summarise(saved: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Render the README markdown; also return the per-condition statistics behind it."""
    runs, cfg = saved["runs"], saved["config"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        by.setdefault(r["condition"], []).append(r)
    refs = {"loops": "loops-1", "freeze": "pretrained-1loop", "long": "long-1"}
    stat = {}
    for name, rs in by.items():
        ref = refs[rs[0]["study"]]
        stat[name] = condition_stats(rs, by.get(ref) if name != ref else None)
    lines = [
        f"Machine: {saved['machine']}. Wall time: {saved['minutes']:.1f} min for {len(runs)} runs "
        f"({saved['jobs']} at a time, 1 thread each).",
        "",
        "Metric: **sampled-future video MSE** on the validation split (`val/sample/video/mse`: "
        f"`CanvasModule.sample`, {RECIPE['sample_metric_steps']} sampling step(s), MSE against the true frames, "
        "mean over the predicted frames; lower is better), mean over seeds with its 95% t interval; the "
        "baselines (repeat the last context frame, the training mean frame, constant-velocity extrapolation "
        "of the true ball state) are scored on the same clips. Welch p-values are two-sided "
        f"(`scipy.stats.ttest_ind(equal_var=False)`, {saved['seeds']} seeds per group). Recipe: "
        + ", ".join(f"`{k}={v!r}`" for k, v in saved.get("recipe", RECIPE).items())
        + f", `canvas_dit` with {N_HEADS} heads, d_model {cfg['d_model']}, batch {cfg['batch_size']}, "
        f"{cfg['n_train']} training and {cfg['n_val']} validation clips per seed (data seeded by the run's seed).",
    ]
    loops = [n for n in (f"loops-{k}" for k in cfg["loops"]) if n in stat]
    if loops:
        lines += [
            "",
            f"**Loop count** (quick-start canvas: 8 frames, 4 predicted; {cfg['depth']} blocks run k times, all "
            f"loops from the first step; {stat[loops[0]]['steps']} steps):",
            "",
            *_table(loops, stat, "loops-1", ("blocks x loops", lambda n, s: f"{s['depth']} x {s['loops']}")),
            "",
            f"Against loops-1: {_verdicts(loops, stat, 'loops-1') or 'n/a'}. "
            f"Best: **{min(loops, key=lambda n: stat[n]['mean'])}**. {_learns(loops[0], stat[loops[0]])}.",
        ]
    freeze = [n for n in ("pretrained", *(f"freeze-{lvl}" for lvl in cfg["freeze_levels"]), "pretrained-1loop")
              if n in stat]
    if "pretrained-1loop" in stat:
        trains = {"pretrained": "all (pretraining)", "freeze-full": "loop embeddings only",
                  "freeze-half": f"all but the first {cfg['depth'] // 2} block(s)", "freeze-none": "all",
                  "pretrained-1loop": "all"}
        lines += [
            "",
            f"**Freeze levels** ({cfg['depth']} blocks pretrained at 1 loop for {stat['pretrained']['steps']} steps "
            f"(`pretrained`), then {stat['pretrained-1loop']['steps']} more steps at {cfg['freeze_loops']} loops "
            "with the given parameters "
            "training, or at 1 loop for the control `pretrained-1loop`; steps count the continued training):",
            "",
            *_table(freeze, stat, "pretrained-1loop", ("loops: trains", lambda n, s: f"{s['loops']}: {trains[n]}")),
            "",
            f"Against the 1-loop control: {_verdicts(freeze[1:], stat, 'pretrained-1loop')}. "
            f"{_learns('pretrained-1loop', stat['pretrained-1loop'])}.",
        ]
    long = [n for n in (f"long-{k}" for k in cfg["long_loops"]) if n in stat]
    if long:
        frames = sorted(stat[long[0]]["per_frame"]["sample"])
        last_k = long[-1]
        pf = {n: stat[n]["per_frame"]["sample"] for n in long}
        lines += [
            "",
            f"**Long horizon** (12 frames, 4 given, 8 predicted, causal-temporal; {cfg['long_depth']} block run k "
            f"times, so a predicted frame sees at most k frames back; {stat[long[0]]['steps']} steps):",
            "",
            *_table(long, stat, "long-1", ("blocks x loops", lambda n, s: f"{s['depth']} x {s['loops']}")),
            "",
            "Sampled video MSE per predicted frame (mean over seeds):",
            "",
            "| condition | " + " | ".join(f"frame {t}" for t in frames) + " | mean |",
            "|---|" + "---:|" * (len(frames) + 1),
            *(f"| {n} | " + " | ".join(_f(pf[n][t]) for t in frames) + f" | {_f(stat[n]['mean'])} |" for n in long),
            *(
                f"| baseline: {b.replace('_', ' ')} | "
                + " | ".join(_f(stat[long[0]]["per_frame"][b][t]) for t in frames)
                + f" | {_f(stat[long[0]]['baselines'][b])} |"
                for b in BASELINES
            ),
            "",
            f"Against long-1: {_verdicts(long, stat, 'long-1') or 'n/a'}. "
            + (
                f"{last_k} vs long-1 at the first predicted frame ({frames[0]}): "
                f"{_rel(pf[last_k][frames[0]], pf['long-1'][frames[0]])}; at the last ({frames[-1]}): "
                f"{_rel(pf[last_k][frames[-1]], pf['long-1'][frames[-1]])}. "
                if len(long) > 1 and frames and "long-1" in pf
                else ""
            )
            + f"{_learns(long[0], stat[long[0]])}.",
        ]
    if saved.get("commands"):  # a merge of several runs (--merge)
        lines += ["", "Commands (each run's numbers in the JSON files they name, merged into "
                  f"`{saved.get('out')}`):", "", *(f"* `{c}`" for c in saved["commands"])]
        return "\n".join(lines), stat
    lines += [
        "",
        f"`python benchmarks/looping.py --seeds {saved['seeds']} --jobs {saved['jobs']} --steps {cfg['steps']} "
        f"--studies {','.join(saved.get('studies', STUDIES))} --loops {','.join(map(str, cfg['loops']))} "
        f"--long-loops {','.join(map(str, cfg['long_loops']))} --write-readme`; every run's "
        f"numbers in `{saved.get('out', 'runs/benchmarks/looping.json')}`.",
    ]
    return "\n".join(lines), stat


# -- main -----------------------------------------------------------------------------------


def command_of(saved: dict[str, Any]) -> str:
    """Return the command line that produced one saved run."""
    cfg = saved["config"]
    studies = saved.get("studies", STUDIES)
    cmd = f"python benchmarks/looping.py --seeds {saved['seeds']} --jobs {saved['jobs']} --steps {cfg['steps']}"
    if "freeze" in studies:
        cmd += f" --pretrain-steps {cfg['pretrain_steps']}"
    cmd += f" --studies {','.join(studies)}"
    if "loops" in studies:
        cmd += f" --loops {','.join(map(str, cfg['loops']))}"
    if "long" in studies:
        cmd += f" --long-loops {','.join(map(str, cfg['long_loops']))}"
    return cmd + f" --out {saved.get('out')}"


def merge_runs(saves: list[dict[str, Any]], paths: Sequence[Path], out: Path) -> dict[str, Any]:
    """One saved result from several (the union of their runs; a later file wins a repeated run)."""
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for saved in saves:
        for r in saved["runs"]:
            runs[(r["condition"], r["seed"])] = r
    cfg = dict(saves[0]["config"])
    for saved in saves[1:]:  # the union of loop counts, so every condition is rendered
        for key in ("loops", "long_loops"):
            cfg[key] = sorted(set(cfg[key]) | set(saved["config"][key]))
    studies = [s for s in STUDIES if any(s in saved.get("studies", ()) for saved in saves)]
    machines = sorted({saved["machine"] for saved in saves})
    return {
        **saves[0], "config": cfg, "studies": studies, "runs": list(runs.values()), "out": str(out),
        "minutes": sum(saved["minutes"] for saved in saves), "machine": "; ".join(machines),
        "seeds": min(saved["seeds"] for saved in saves),
        "commands": [
            command_of({**saved, "out": str(p)}) for saved, p in zip(saves, paths, strict=True)
        ],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every (condition, seed), print the tables, save the JSON, optionally write README.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per condition (default 5; 2 with --quick)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes, 1 thread each)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (and continued steps)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="1-loop pretraining steps (freeze study)")
    parser.add_argument("--n-train", type=int, default=None, help="training clips per seed")
    parser.add_argument("--n-val", type=int, default=None, help="validation clips per seed")
    parser.add_argument("--loops", default=None, help="loop counts of the loops study (default 1,2,3,4)")
    parser.add_argument("--long-loops", default=None, help="loop counts of the long study (default 1,2,4)")
    parser.add_argument("--studies", default=",".join(STUDIES), help=f"comma-separated subset of {', '.join(STUDIES)}")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test, numbers meaningless)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "benchmarks" / "looping.json")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render a saved run (no training)")
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None,
        help="combine saved runs (e.g. one per study) into --out, then render them (no training)",
    )
    args = parser.parse_args(argv)
    if args.merge:
        saved = merge_runs([json.loads(p.read_text()) for p in args.merge], args.merge, args.out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(saved, indent=2))
        args.from_json = args.out
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        text, _ = summarise(saved)
        print(text)
        if args.write_readme:
            write_readme_section("looping", text)
            print("README.md: looping section updated")
        return saved
    studies = [s.strip() for s in args.studies.split(",") if s.strip()]
    if not studies or set(studies) - set(STUDIES):
        parser.error(f"--studies must be a subset of {', '.join(STUDIES)}")
    cfg = dict(QUICK if args.quick else DEFAULTS)
    for key in ("steps", "pretrain_steps", "n_train", "n_val"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for key in ("loops", "long_loops"):
        if getattr(args, key) is not None:
            try:
                cfg[key] = [int(k) for k in getattr(args, key).split(",") if k.strip()]
            except ValueError:
                parser.error(f"--{key.replace('_', '-')} must be comma-separated integers")
            if not cfg[key] or min(cfg[key]) < 1:
                parser.error(f"--{key.replace('_', '-')} needs loop counts >= 1")
    seeds = args.seeds or (2 if args.quick else 5)
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []

    def done(job: dict[str, Any], r: dict[str, Any]) -> None:
        runs.append(r)
        base = r["metrics"].get("val/baseline/constant_velocity/video/mse", math.nan)
        print(
            f"  {r['condition']:>16} seed {r['seed']}: sampled video MSE {r['video_mse']:.5f} "
            f"(constant velocity {base:.5f}) {r['seconds']:.0f} s [{len(runs)} done, "
            f"{(time.perf_counter() - start) / 60:.1f} min]",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="looping-") as state_dir:
        execute(plan(cfg, seeds, studies, state_dir), args.jobs, done)
    minutes = (time.perf_counter() - start) / 60
    result = {
        "config": cfg, "recipe": RECIPE, "seeds": seeds, "jobs": args.jobs, "studies": studies,
        "machine": machine_note(), "minutes": minutes, "out": str(args.out), "runs": runs,
    }
    from canvas_engineering._atomic import atomic_write_text

    def save() -> None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(result, indent=1, default=float))
            print(f"\nresults: {args.out}")
        except OSError as err:
            print(f"could not write {args.out}: {err}")

    save()  # before rendering: the runs are the expensive part
    text, stat = summarise(result)
    result["summary"] = stat
    save()
    print()
    print(text)
    if args.write_readme:
        write_readme_section("looping", text)
        print("README.md: looping section updated")
    return result


if __name__ == "__main__":
    main()
