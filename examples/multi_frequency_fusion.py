"""Multi-Frequency Fusion: a canvas whose token allocation follows each stream's bandwidth.

Three synthetic signal streams run at different rates: ``fast`` (a sample every real frame),
``medium`` (every 2 frames) and ``slow`` (every 4); each channel is a sinusoid of a fixed
frequency with a random amplitude and phase per item, plus noise, and the fast and medium
streams also carry the slow one. The task is forecasting: given real frames 0-7 of every
stream, predict frames 8-15.

The same network (canvas DiT, same width, depth, steps, seed and data) is trained on two
canvases of the same size (16 x 1 x 3 = 48 positions):

* ``bandwidth``: each region's period is its stream's (1, 2, 4), so the streams get 16, 8 and
  4 positions: 28 tokens, in proportion to their sample rates (20 positions stay unassigned);
* ``flat``: every region has period 1 and 16 positions (48 tokens); the medium and slow
  streams are up-sampled by holding each sample.

The topology is ``dense`` (every position attends every position): with
``causal_temporal`` each layer reaches one frame back, so a forecast frame more than
``depth`` frames past the context could not see it.

Reported, on the validation split, per stream at the stream's own rate (the held copies of
the flat canvas are averaged back to one value per sample): the error of the forecast (the
mean of ``--samples`` draws of ``CanvasModule.sample``, an estimate of the conditional mean),
the error of a single draw, and the training objective; for scale, the error of predicting
0 (the streams' mean) and of a linear least-squares forecaster fitted on the training split.

    python examples/multi_frequency_fusion.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Example, fit, format_table, pyplot, validation_loss

NAME = "multi_frequency_fusion"
ALLOCATIONS = ("bandwidth", "flat")
FULL = {
    "steps": 1500, "n_train": 4096, "n_val": 128, "batch_size": 32, "depth": 3, "d_model": 128,
    "inference_steps": 20, "samples": 8,
}
QUICK = {
    "steps": 25, "n_train": 64, "n_val": 16, "batch_size": 16, "depth": 1, "d_model": 32,
    "inference_steps": 3, "samples": 2,
}
FRAMES, T_CURRENT, COMPONENTS = 16, 8, 1
STREAMS = ("fast", "medium", "slow", "mean")


def make_datamodule(allocation: str, cfg: dict[str, int], seed: int):
    """Return the data of one allocation: same samples, same split seeds, only the canvas differs."""
    from canvas_engineering.datamodules import MultiFrequencyDataModule

    return MultiFrequencyDataModule(
        frames=FRAMES,
        components=COMPONENTS,
        allocation=allocation,
        t_current=T_CURRENT,
        topology="dense",
        n_train=cfg["n_train"],
        n_val=cfg["n_val"],
        batch_size=cfg["batch_size"],
        seed=seed,
        d_model=cfg["d_model"],
    )


def periods() -> dict[str, int]:
    """Stream name -> real frames between two of its samples."""
    from canvas_engineering.datamodules.multi_frequency import STREAM_PERIODS

    return dict(STREAM_PERIODS)


def native_rate(x: torch.Tensor, period: int, allocation: str) -> torch.Tensor:
    """Return a stream tensor ``(B, t, dim)`` at the stream's own rate (flat canvases: mean of held copies)."""
    if allocation == "flat" and period > 1:
        return x.unflatten(1, (x.shape[1] // period, period)).mean(2)
    return x


def first_future(period: int) -> int:
    """Index of a stream's first native sample at real time >= t_current."""
    return math.ceil(T_CURRENT / period)


def _with_mean(table: dict[str, float]) -> dict[str, float]:
    return {**table, "mean": sum(table.values()) / len(table)}


@torch.no_grad()
def forecast_errors(model: Any, dm: Any, steps: int, samples: int, seed: int) -> dict[str, Any]:
    """Sample the future of every validation item ``samples`` times; MSE per stream, future samples only.

    Returns the MSE of the mean of the draws (``mse``), of the first draw alone
    (``sample_mse``) and one item's truth and forecast for the figure.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sq = {n: 0.0 for n in periods()}
    sq1 = {n: 0.0 for n in periods()}
    count = {n: 0 for n in periods()}
    example: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for batch in dm.val_dataloader():
        batch = {k: v for k, v in batch.items() if k != "baselines"}  # the model scores those itself
        b = next(iter(batch.values())).shape[0]
        repeated = {k: v.repeat(samples, *[1] * (v.dim() - 1)) for k, v in batch.items()}
        drawn = model.sample(repeated, num_inference_steps=steps, generator=gen)
        for name, period in periods().items():
            first = first_future(period)
            truth = native_rate(batch[name], period, dm.allocation)[:, first:]  # (B, future, dim)
            draws = native_rate(drawn[name], period, dm.allocation)[:, first:].unflatten(0, (samples, b))
            forecast = draws.mean(0)
            sq[name] += float(((forecast - truth) ** 2).sum())
            sq1[name] += float(((draws[0] - truth) ** 2).sum())
            count[name] += truth.numel()
            if name not in example:
                full = native_rate(batch[name], period, dm.allocation)[0]
                example[name] = (full.clone(), forecast[0].clone())
    return {
        "mse": _with_mean({n: sq[n] / count[n] for n in periods()}),
        "sample_mse": _with_mean({n: sq1[n] / count[n] for n in periods()}),
        "example": example,
    }


def reference_errors(dm: Any) -> dict[str, dict[str, float]]:
    """MSE of predicting 0 and of a linear least-squares forecaster (context of all streams -> future)."""

    def split(name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        data = {n: native_rate(x, periods()[n], dm.allocation) for n, x in dm.dataset(name).tensors.items()}
        context = torch.cat([data[n][:, : first_future(p)].flatten(1) for n, p in periods().items()], 1)
        context = torch.cat([context, torch.ones(len(context), 1)], 1).double()  # with a bias
        return context, {n: data[n][:, first_future(p) :].flatten(1).double() for n, p in periods().items()}

    x_train, y_train = split("train")
    x_val, y_val = split("val")
    linear, zero = {}, {}
    for name in periods():
        weights = torch.linalg.lstsq(x_train, y_train[name]).solution
        linear[name] = float(((x_val @ weights - y_val[name]) ** 2).mean())
        zero[name] = float((y_val[name] ** 2).mean())
    return {"linear_mse": _with_mean(linear), "zero_mse": _with_mean(zero)}


def train_allocation(allocation: str, cfg: dict[str, int], seed: int) -> dict[str, Any]:
    """Train the network on one canvas allocation and score it."""
    import lightning.pytorch as pl

    from canvas_engineering import CanvasModule

    dm = make_datamodule(allocation, cfg, seed)
    pl.seed_everything(seed, verbose=False)  # same initialisation for both canvases
    model = CanvasModule(
        dm.schema,
        dm.region_formats,
        backbone="canvas_dit",
        backbone_config={"depth": cfg["depth"], "n_heads": 4},
        lr=1e-3,
        warmup_steps=min(50, cfg["steps"] // 5),
    )
    run = fit(model, dm, cfg["steps"])
    dm.setup("validate")
    scores = forecast_errors(model, dm, cfg["inference_steps"], cfg["samples"], seed)
    layout = dm.schema.layout
    return {
        "dm": dm,
        "losses": run["losses"],
        "seconds": run["seconds"],
        "val_loss": validation_loss(model, dm.val_dataloader()),
        "tokens": sum(layout.region_numel(n) for n in layout.regions),
        "positions": layout.num_positions,
        **scores,
    }


COLORS = {"bandwidth": "#4A90D9", "flat": "#E8734A"}


def results_figure(runs: dict[str, dict[str, Any]], ref: dict[str, dict[str, float]]):
    """Bar chart of forecast MSE per stream (with the references) and the training curves."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for i, alloc in enumerate(ALLOCATIONS):
        r = runs[alloc]
        xs = [k + (i - 0.5) * width for k in range(len(STREAMS))]
        ax.bar(xs, [r["mse"][s] for s in STREAMS], width, color=COLORS[alloc], label=f"{alloc} ({r['tokens']} tokens)")
    for key, marker, label in (("zero_mse", "_", "predict 0"), ("linear_mse", "*", "linear least squares")):
        ax.scatter(range(len(STREAMS)), [ref[key][s] for s in STREAMS], marker=marker, s=300 if marker == "_" else 60,
                   color="k", label=label, zorder=3)
    ax.set_xticks(range(len(STREAMS)), STREAMS)
    ax.set_ylabel("forecast MSE (frames 8-15, native rate)")
    ax.set_title("validation forecast error (mean of sampled forecasts)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    for alloc in ALLOCATIONS:
        losses = torch.tensor(runs[alloc]["losses"])
        k = max(1, len(losses) // 50)
        smooth = losses[: len(losses) // k * k].reshape(-1, k).mean(1)
        ax2.plot((torch.arange(len(smooth)) + 0.5) * k, smooth, color=COLORS[alloc], label=alloc)
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss")
    ax2.set_title("training objective (weighted data-space MSE)", fontsize=10)
    ax2.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def predictions_figure(runs: dict[str, dict[str, Any]]):
    """One validation item: truth and both models' forecasts of channel 0 of each stream."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (name, period) in zip(axes, periods().items(), strict=True):
        truth = runs["bandwidth"]["example"][name][0][:, 0]
        times = torch.arange(len(truth)) * period
        future = times[first_future(period) :]
        ax.axvspan(T_CURRENT - 0.5, FRAMES - 0.5, color="0.92", zorder=0)
        ax.plot(times, truth, "-o", color="k", markersize=3, label="truth")
        for alloc in ALLOCATIONS:
            ax.plot(future, runs[alloc]["example"][name][1][:, 0], "--x", color=COLORS[alloc], label=alloc)
        ax.set_title(f"{name} (period {period})", fontsize=10)
        ax.set_xlabel("real frame (shaded: forecast)")
    axes[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train on both allocations; print and return the validation errors."""
    ex = Example(NAME, __doc__)
    ex.parser.add_argument("--steps", type=int, default=None, help="training steps per allocation")
    ex.parser.add_argument("--samples", type=int, default=None, help="sampled forecasts averaged per item")
    args = ex.parse(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("steps", "samples"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    runs = {}
    for alloc in ALLOCATIONS:
        print(f"training on the {alloc!r} canvas ({cfg['steps']} steps)...", flush=True)
        runs[alloc] = train_allocation(alloc, cfg, args.seed)
        print(runs[alloc]["dm"].describe())
    ref = reference_errors(runs["bandwidth"]["dm"])

    from canvas_engineering.viz import layout_figure

    ex.save(results_figure(runs, ref), "results.png")
    ex.save(predictions_figure(runs), "predictions.png")
    for alloc in ALLOCATIONS:
        ex.save(layout_figure(runs[alloc]["dm"].schema.layout, max_frames=16), f"layout_{alloc}.png")

    rows = [
        [f"{alloc} canvas", f"{r['tokens']}/{r['positions']}", *(r["mse"][s] for s in STREAMS),
         r["sample_mse"]["mean"], r["val_loss"], f"{r['seconds']:.0f} s"]
        for alloc, r in runs.items()
    ]
    nan = float("nan")
    rows.append(["(predict 0)", "-", *(ref["zero_mse"][s] for s in STREAMS), nan, nan, "-"])
    rows.append(["(linear least squares)", "-", *(ref["linear_mse"][s] for s in STREAMS), nan, nan, "-"])
    b, f = runs["bandwidth"]["mse"]["mean"], runs["flat"]["mse"]["mean"]
    better, worse = ("bandwidth", "flat") if b < f else ("flat", "bandwidth")
    lines = [
        f"canvas DiT depth {cfg['depth']}, d_model {cfg['d_model']}, {cfg['steps']} steps x batch {cfg['batch_size']}, "
        f"seed {args.seed}; forecast of real frames {T_CURRENT}-{FRAMES - 1} from frames 0-{T_CURRENT - 1} on "
        f"{cfg['n_val']} validation items: mean of {cfg['samples']} draws of {cfg['inference_steps']} denoising steps",
        "",
        *format_table(
            ["forecaster", "tokens/canvas", "MSE fast", "MSE medium", "MSE slow", "MSE mean", "1 draw: mean",
             "val objective", "train time"],
            rows,
        ),
        "",
        f"{better} allocation forecasts better: mean MSE {min(b, f):.4g} vs {max(b, f):.4g} for {worse} "
        f"({max(b, f) / min(b, f):.2f}x), with {runs['bandwidth']['tokens']} vs {runs['flat']['tokens']} tokens "
        "on the same 48-position canvas (one seed).",
    ]
    ex.report("Multi-Frequency Fusion: bandwidth vs flat allocation", lines)
    keys = ("mse", "sample_mse", "val_loss", "tokens", "positions", "seconds")
    return {
        "bandwidth": {k: runs["bandwidth"][k] for k in keys},
        "flat": {k: runs["flat"][k] for k in keys},
        **ref,
        "figures": dict(ex.figures),
        "seconds": ex.elapsed(),
    }


if __name__ == "__main__":
    main()
