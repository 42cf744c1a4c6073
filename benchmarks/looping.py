"""Benchmark: the looping result at small scale (looped vs non-looped canvas DiTs, several seeds).

Data: the quick-start bouncing-ball video (``BouncingBallsDataModule``, fewer training
samples), predicting the second half of each clip from the first. Every model is a canvas
DiT (``CanvasModule``, 4 heads, lr 1e-3, 20 warm-up steps) trained for the same number of
steps with the same batches; only the backbone differs:

* ``looped-L`` (L = 1..4): 2 blocks of width 64, each run L times with shared weights and
  learned loop embeddings (``max_loops=L``, all L loops active from the first step, no
  curriculum). ``looped-1`` is the plain 2-block model.
* ``deep-L`` (matched depth): 2L distinct blocks of width 64, one pass: the same effective
  depth and compute as ``looped-L``, L times the block parameters.
* ``thin-L`` (matched parameters): 2L distinct blocks, one pass, narrowed to the width
  (a multiple of 4) whose total parameter count is closest to ``looped-L``'s: the same depth,
  compute of the same shape, the same parameter budget, no sharing.

Reported: final validation loss (the training objective, weighted data-space MSE, on the
validation split with fixed noise and timestep draws, 4 passes) as mean ± std over seeds;
**parameter efficiency** as the seed defines it: how many parameters a non-looped model of
the same width needs to reach the looped model's loss, divided by the looped model's
parameters (log-linear interpolation along the ``looped-1``/``deep-2``/``deep-3``/``deep-4``
curve of mean loss against parameters); and two-sided Welch t-test p-values of each looped
model against the matched-parameter models (``thin-L``, and ``looped-1`` which has the same
parameters and width) and against ``deep-L``.

    python benchmarks/looping.py [--seeds 3] [--steps 300] [--jobs 2] [--write-readme] [--quick]
    python benchmarks/looping.py --from-json runs/benchmarks/looping.json [--write-readme]   # re-render only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, write_readme_section  # noqa: E402

DEFAULTS = {"steps": 300, "n_train": 256, "n_val": 128, "batch_size": 16, "width": 64, "depth": 2, "val_repeats": 4}
QUICK = {"steps": 6, "n_train": 32, "n_val": 8, "batch_size": 8, "width": 32, "depth": 1, "val_repeats": 1}
N_HEADS = 4


# -- statistics -----------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            if aa == 0:
                break
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (scipy's when installed, else the same formula here)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    try:
        from scipy.stats import ttest_ind

        return float(ttest_ind(a, b, equal_var=False).pvalue)
    except ImportError:
        pass
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 1.0 if ma == mb else 0.0
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return betainc(df / 2, 0.5, df / (df + t * t))


def params_to_reach(target: float, curve: Sequence[tuple[int, float]]) -> tuple[float | None, str]:
    """Parameters a model on ``curve`` (params, loss) needs to reach loss ``target``.

    Walks the curve from the fewest parameters and interpolates log-linearly in the first
    segment whose losses bracket ``target``. Returns ``(params, "")``, or ``(None, "below")``
    when even the smallest model is at least as good, ``(None, "above")`` when no model on
    the curve reaches ``target``.
    """
    pts = sorted(curve)
    if target >= pts[0][1]:
        return None, "below"
    for (p0, l0), (p1, l1) in zip(pts, pts[1:]):
        if l1 <= target < l0:
            frac = (l0 - target) / (l0 - l1)
            return math.exp(math.log(p0) + frac * (math.log(p1) - math.log(p0))), ""
    return None, "above"


# -- training -------------------------------------------------------------------------------


def build(depth: int, width: int, loops: int, cfg: dict[str, Any], seed: int):  # noqa: ANN201
    """Data module and model of one condition (data seed fixed at 0; ``seed`` for initialisation)."""
    import lightning.pytorch as pl

    from canvas_engineering import CanvasModule
    from canvas_engineering.datamodules import BouncingBallsDataModule

    dm = BouncingBallsDataModule(
        n_train=cfg["n_train"], n_val=cfg["n_val"], n_test=8, batch_size=cfg["batch_size"], seed=0, d_model=width
    )
    pl.seed_everything(seed, verbose=False)
    model = CanvasModule(
        dm.schema,
        dm.region_formats,
        backbone="canvas_dit",
        backbone_config={"depth": depth, "n_heads": N_HEADS},
        max_loops=loops,
        lr=1e-3,
        warmup_steps=min(20, cfg["steps"] // 5),
    )
    model.set_loops(loops)
    return dm, model


def count_params(depth: int, width: int, loops: int, cfg: dict[str, Any]) -> int:
    """Trainable parameters of a condition's whole model (codecs, embeddings and backbone)."""
    _, model = build(depth, width, loops, cfg, 0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (condition, seed) and return its final validation loss."""
    import warnings

    import lightning.pytorch as pl
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|Tensor Cores).*")
    cfg = job["cfg"]
    dm, model = build(job["depth"], job["width"], job["loops"], cfg, job["seed"])
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=cfg["steps"], max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    dm.setup("validate")
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        torch.manual_seed(12345)  # the same noise and timestep draws for every condition of a width
        for _ in range(cfg["val_repeats"]):
            for batch in dm.val_dataloader():
                loss, _ = model.compute_loss(batch)
                total += float(loss) * len(batch["video"])
                count += len(batch["video"])
    return {**{k: job[k] for k in ("name", "seed", "depth", "width", "loops")}, "val_loss": total / count, "seconds": seconds}


def thin_width(depth: int, target: int, cfg: dict[str, Any]) -> int:
    """The width (multiple of 4, at most the default width) whose parameter count is closest to ``target``."""
    best = min(range(8, cfg["width"] + 1, N_HEADS), key=lambda w: abs(count_params(depth, w, 1, cfg) - target))
    return best


def conditions(max_loops: int, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every condition: name, depth, width, loops, kind, its L, its parameter count."""
    d, w = cfg["depth"], cfg["width"]
    out = []
    for loops in range(1, max_loops + 1):
        out.append({"name": f"looped-{loops}", "kind": "looped", "L": loops, "depth": d, "width": w, "loops": loops})
    for loops in range(2, max_loops + 1):
        out.append({"name": f"deep-{loops}", "kind": "deep", "L": loops, "depth": d * loops, "width": w, "loops": 1})
    for cond in out:
        cond["params"] = count_params(cond["depth"], cond["width"], cond["loops"], cfg)
    looped_params = {c["L"]: c["params"] for c in out if c["kind"] == "looped"}
    for loops in range(2, max_loops + 1):
        width = thin_width(d * loops, looped_params[loops], cfg)
        cond = {"name": f"thin-{loops}", "kind": "thin", "L": loops, "depth": d * loops, "width": width, "loops": 1}
        cond["params"] = count_params(cond["depth"], width, 1, cfg)
        out.append(cond)
    return out


# -- report ---------------------------------------------------------------------------------


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def summarise(
    conds: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    cfg: dict[str, Any],
    seeds: int,
    minutes: float,
    jobs: int = 1,
    machine: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The README text (markdown table and findings) and the numbers behind it."""
    by_name = {c["name"]: c for c in conds}
    losses: dict[str, list[float]] = {c["name"]: [] for c in conds}
    for r in runs:
        losses[r["name"]].append(r["val_loss"])
    stats = {
        n: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "losses": v}
        for n, v in losses.items()
    }
    max_loops = max(c["L"] for c in conds)
    curve = [(by_name["looped-1"]["params"], stats["looped-1"]["mean"])]
    curve += [(by_name[f"deep-{k}"]["params"], stats[f"deep-{k}"]["mean"]) for k in range(2, max_loops + 1)]
    base = stats["looped-1"]
    lines = [
        "| model | blocks x passes | width | parameters | final val loss (mean ± std) | vs looped-1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in conds:
        s = stats[c["name"]]
        rel = (s["mean"] / base["mean"] - 1) * 100
        lines.append(
            f"| {c['name']} | {c['depth']} x {c['loops']} | {c['width']} | {c['params']:,} | "
            f"{s['mean']:.5f} ± {s['std']:.5f} | {rel:+.1f}% |"
        )
    lines += [
        "",
        "| looped model | parameter efficiency | p vs thin-L (same params, same depth) | p vs looped-1 (same params, same width) | p vs deep-L (same depth, L x params) |",
        "|---|---:|---:|---:|---:|",
    ]
    numbers: dict[str, Any] = {"stats": stats, "efficiency": {}, "eff_text": {}, "p": {}}
    for k in range(2, max_loops + 1):
        name = f"looped-{k}"
        p_needed, where = params_to_reach(stats[name]["mean"], curve)
        own = by_name[name]["params"]
        if p_needed is not None:
            eff, eff_txt = p_needed / own, f"{p_needed / own:.2f}x"
        elif where == "below":
            eff, eff_txt = None, "at most 1x (not better than looped-1)"
        else:
            eff, eff_txt = None, f"more than {curve[-1][0] / own:.2f}x (better than every deep model)"
        p_thin = welch_p(stats[name]["losses"], stats[f"thin-{k}"]["losses"])
        p_one = welch_p(stats[name]["losses"], stats["looped-1"]["losses"])
        p_deep = welch_p(stats[name]["losses"], stats[f"deep-{k}"]["losses"])
        numbers["efficiency"][name] = eff
        numbers["eff_text"][name] = eff_txt
        numbers["p"][name] = {"thin": p_thin, "looped-1": p_one, "deep": p_deep}
        lines.append(f"| {name} | {eff_txt} | {_fmt_p(p_thin)} | {_fmt_p(p_one)} | {_fmt_p(p_deep)} |")
    # Findings, written from the numbers.
    best = min((f"looped-{k}" for k in range(1, max_loops + 1)), key=lambda n: stats[n]["mean"])
    findings = []
    for k in range(2, max_loops + 1):
        name = f"looped-{k}"
        for other, key in ((f"thin-{k}", "thin"), ("looped-1", "looped-1"), (f"deep-{k}", "deep")):
            s, t, p = stats[name], stats[other], numbers["p"][name][key]
            verdict = "lower" if s["mean"] < t["mean"] else "higher"
            findings.append(
                f"{name} vs {other}: {verdict} loss ({s['mean']:.5f} vs {t['mean']:.5f}, {(s['mean'] / t['mean'] - 1) * 100:+.1f}%), "
                f"{'significant' if p < 0.05 else 'not significant'} at p < 0.05 (p = {_fmt_p(p)})"
            )
    eff_texts = [f"{n}: {t}" for n, t in numbers["eff_text"].items()]
    looped_names = [f"looped-{k}" for k in range(2, max_loops + 1)]
    p_one = [numbers["p"][n]["looped-1"] for n in looped_names]
    p_thin = [numbers["p"][n]["thin"] for n in looped_names]
    best_note = ""
    if best != "looped-1" and numbers["p"][best]["looped-1"] >= 0.05:
        best_note = " (not significantly better than one pass)"
    deep_gain = (1 - min(loss for _, loss in curve[1:]) / curve[0][1]) * 100
    if all(p >= 0.05 for p in p_one):
        headline = (
            f"**Null result at this scale.** No looped model differs significantly from the same 2 blocks run once "
            f"(p >= {min(p_one):.2g}), so looping adds depth and compute without a measurable gain here, and the "
            f"seed's 1.73x parameter efficiency is not reproduced. The unshared deep models of the same width gain "
            f"only {deep_gain:.1f}% from {curve[1][0] / curve[0][0]:.1f}-{curve[-1][0] / curve[0][0]:.1f}x the "
            "parameters, so this task leaves little room for an efficiency gain."
        )
    else:
        sig = [n for n, p in zip(looped_names, p_one) if p < 0.05]
        headline = f"Looping changes the loss significantly against one pass for {', '.join(sig)}."
    if all(p < 0.05 for p in p_thin) and all(stats[n]["mean"] < stats[f"thin-{n.split('-')[1]}"]["mean"] for n in looped_names):
        headline += (
            " At a matched parameter count and depth, the looped (shared, wide) models beat the unshared narrow "
            "ones significantly: for a fixed budget, width paid for by sharing beats distinct thin layers."
        )
    lines += [
        "",
        headline,
        "",
        f"Best loop count among the looped models: **{best.split('-')[1]}**{best_note}. Parameter efficiency "
        f"(parameters a non-looped model of width {cfg['width']} needs for the same loss, over the looped model's): "
        + "; ".join(eff_texts) + ".",
        "",
        *[f"* {f}." for f in findings],
        "",
        f"Setting: {seeds} seeds (initialisation and noise; the data is fixed), {cfg['steps']} steps x batch "
        f"{cfg['batch_size']}, {cfg['n_train']} training and {cfg['n_val']} validation clips, "
        f"{cfg['val_repeats']} validation passes with fixed noise. Parameters count the whole CanvasModule "
        f"(codecs, embeddings, backbone). Efficiencies are read off mean losses: where the p-values are "
        f"large they are within seed noise. Welch p-values with {seeds} runs per group are coarse. "
        f"Total {minutes:.1f} min ({jobs} run(s) at a time) on {machine or machine_note()}. "
        "`python benchmarks/looping.py --write-readme`.",
    ]
    return "\n".join(lines), numbers


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every (condition, seed), print the table, optionally write it into README.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per condition")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--max-loops", type=int, default=4, help="largest loop count L")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes, cores split between them)")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test, numbers meaningless)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "benchmarks" / "looping.json")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render the report of a saved run (no training)")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        text, _ = summarise(
            saved["conditions"], saved["runs"], saved["config"], saved["seeds"], saved["minutes"],
            saved.get("jobs", 1), saved.get("machine"),
        )
        print(text)
        if args.write_readme:
            write_readme_section("looping", text)
            print("README.md: looping section updated")
        return saved
    cfg = dict(QUICK if args.quick else DEFAULTS)
    if args.steps:
        cfg["steps"] = args.steps
    max_loops = 2 if args.quick and args.max_loops == 4 else args.max_loops
    start = time.perf_counter()
    conds = conditions(max_loops, cfg)
    for c in conds:
        print(f"{c['name']:>9}: {c['depth']} blocks x {c['loops']} passes, width {c['width']}, {c['params']:,} parameters")
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    jobs = [
        {**{k: c[k] for k in ("name", "depth", "width", "loops")}, "seed": seed, "cfg": cfg, "threads": threads}
        for seed in range(args.seeds)
        for c in sorted(conds, key=lambda c: -c["depth"] * c["loops"])  # longest first
    ]
    runs: list[dict[str, Any]] = []

    def done(r: dict[str, Any]) -> None:
        runs.append(r)
        print(f"  {r['name']:>9} seed {r['seed']}: val loss {r['val_loss']:.5f} ({r['seconds']:.0f} s)", flush=True)

    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            for r in pool.map(run_one, jobs):
                done(r)
    else:
        for job in jobs:
            done(run_one(job))
    minutes = (time.perf_counter() - start) / 60
    machine = f"{machine_note()}; each run used {threads} thread(s)"
    text, numbers = summarise(conds, runs, cfg, args.seeds, minutes, args.jobs, machine)
    print()
    print(text)
    result = {
        "config": cfg, "seeds": args.seeds, "jobs": args.jobs, "machine": machine, "conditions": conds, "runs": runs,
        "minutes": minutes, **numbers,
    }
    try:
        from canvas_engineering._atomic import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=1, default=float))
        print(f"\nresults: {args.out}")
    except OSError as err:
        print(f"could not write {args.out}: {err}")
    if args.write_readme:
        write_readme_section("looping", text)
        print("README.md: looping section updated")
    return result


if __name__ == "__main__":
    main()
