"""Helpers shared by the runnable examples: arguments, a quiet CPU trainer, figures, summaries.

Each example runs as ``python examples/<name>.py [--quick] [--out DIR]`` and also exposes
``main(argv) -> dict`` (the reported numbers) for the test suite.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = [
    "Example",
    "LossHistory",
    "fit",
    "format_table",
    "pyplot",
    "quiet",
    "save",
    "validation_loss",
]


def quiet() -> None:
    """Silence Lightning's banner lines and the warnings that do not concern a CPU example."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        ".*does not have many workers.*",
        ".*LightningModule.*has parameters that were not used.*",
        ".*Trying to infer the `batch_size`.*",
        ".*You defined a `validation_step` but have no `val_dataloader`.*",
        ".*GPU available but not used.*",
        ".*that has Tensor Cores.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


class Example:
    """Command line of an example: ``--quick``, ``--out DIR``, ``--seed N`` plus the example's own flags.

    Args:
        name: the example's name (default output folder ``runs/examples/<name>``).
        description: ``--help`` text (the module docstring).

    """

    def __init__(self, name: str, description: str | None) -> None:
        self.name = name
        self.parser = argparse.ArgumentParser(
            prog=f"python examples/{name}.py",
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.parser.add_argument("--quick", action="store_true", help="tiny run (seconds; what the tests run)")
        self.parser.add_argument(
            "--out",
            type=Path,
            default=Path("runs") / "examples" / name,
            help="folder for the figures (default: %(default)s)",
        )
        self.parser.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
        self.parser.add_argument(
            "--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)"
        )
        self.start = time.perf_counter()
        self.figures: dict[str, str] = {}

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """Parse ``argv`` (``None``: ``sys.argv``), create the output folder, seed everything."""
        args = self.parser.parse_args(None if argv is None else list(argv))
        args.out.mkdir(parents=True, exist_ok=True)
        if args.threads:
            torch.set_num_threads(args.threads)
        quiet()
        pl.seed_everything(args.seed, verbose=False)
        self.out = args.out
        return args

    def save(self, fig: Any, filename: str) -> str:
        """Save a matplotlib figure as PNG (atomically) under the output folder; remember its path."""
        path = str(save(fig, self.out / filename))
        self.figures[Path(filename).stem] = path
        return path

    def elapsed(self) -> float:
        """Seconds since the example started."""
        return time.perf_counter() - self.start

    def report(self, title: str, lines: Sequence[str]) -> None:
        """Print the result block and the figure paths."""
        bar = "=" * max(len(title), 60)
        print(f"\n{bar}\n{title}\n{bar}")
        for line in lines:
            print(line)
        if self.figures:
            print("figures:")
            for path in self.figures.values():
                print(f"  {path}")
        print(f"wall time: {self.elapsed():.1f} s")


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """:func:`canvas_engineering.viz.save_figure`: PNG written atomically, figure closed."""
    from canvas_engineering.viz import save_figure

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


class LossHistory(pl.Callback):
    """Record the training loss of every optimizer step in ``losses``."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def fit(model: Any, datamodule: Any, steps: int, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train ``model`` for ``steps`` optimizer steps on the CPU with ``lightning.Trainer``.

    No logger, checkpoints or progress bar; validation is left to the caller.

    Returns:
        ``{"losses": [train loss per step], "seconds": wall time}``.

    """
    history = LossHistory()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=sys.stderr.isatty(),  # a bar in a terminal, none in logs and tests
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[history, *callbacks],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    return {"losses": history.losses, "seconds": time.perf_counter() - start, "trainer": trainer}


@torch.no_grad()
def validation_loss(model: Any, loader: Any, repeats: int = 2, seed: int = 1234) -> float:
    """Return the model's training objective on ``loader`` (weighted data-space MSE over the noised positions).

    Noise and timesteps come from a fixed seed (the global RNG state is restored after), and the
    loader is passed ``repeats`` times, so two models are scored on the same draws.
    """
    state = torch.random.get_rng_state()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        torch.manual_seed(seed)
        for _ in range(repeats):
            for batch in loader:
                loss, _ = model.compute_loss(batch)
                b = next(iter(batch.values())).shape[0]
                total += float(loss) * b
                count += b
    finally:
        torch.random.set_rng_state(state)
        model.train(was_training)
    return total / max(count, 1)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Plain-text table lines (numbers formatted to 4 significant digits)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return lines
