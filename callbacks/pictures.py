"""Pictures of a canvas model in TensorBoard: layout, attention mask, predictions vs targets.

:class:`CanvasPictures` logs, through the trainer's ``TensorBoardLogger``:

* ``canvas/layout``: the region allocation per frame (once, when fit starts);
* ``canvas/attention_mask``: the compiled attention mask (once);
* ``predictions/<region>``: for the first validation batch, the model's sampled prediction
  against the target (frames for ``"patches"`` regions, curves over time for ``"vector"``
  and ``"action"`` regions), every ``every_n_epochs`` epochs.

:func:`prediction_figure` draws one region's comparison and works without Lightning.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from canvas_engineering._atomic import atomic_write_bytes
from canvas_engineering.compilation.compiler import compile_topology
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.errors import CanvasValidationError, IncompatibleModelError
from canvas_engineering.models.region_codecs import RegionFormat
from canvas_engineering.validation import check_int, check_positive_int
from canvas_engineering.viz import layout_figure, mask_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CanvasPictures", "prediction_figure"]

#: most vector dimensions drawn per region (the rest are left out of the picture)
MAX_CURVES = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a screen
    import matplotlib.pyplot as plt

    return plt


def _frame_titles(layout: CanvasLayout, name: str, frames: int) -> list[str]:
    t0 = layout.region_spec(name).bounds[0]
    return [f"t={t0 + f}" + (" *" if t0 + f >= layout.t_current else "") for f in range(frames)]


def _image(frame: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """(C, H, W) -> an array imshow can draw, and its colour map."""
    if frame.shape[0] == 3:
        return frame.permute(1, 2, 0), None  # (H, W, 3)
    return frame[0], "gray"  # first channel


def prediction_figure(
    name: str,
    fmt: RegionFormat,
    target: torch.Tensor,
    predicted: torch.Tensor,
    layout: CanvasLayout,
) -> Figure:
    """Target against prediction for one region of a few samples.

    ``"patches"`` regions (tensors ``(S, t, C, H, W)``): for each sample a row of target
    frames above a row of predicted frames, one column per region frame, both scaled to the
    target's value range. Three channels are drawn as RGB, otherwise the first channel in
    grey. ``"vector"``/``"action"`` regions (tensors ``(S, t, dim)``): one panel per sample,
    each dimension (up to :data:`MAX_CURVES`) a solid target and a dashed predicted curve
    over canvas time. Frames at or after ``layout.t_current`` (the predicted future) are
    starred or shaded.

    Args:
        name: the region.
        fmt: its :class:`~canvas_engineering.models.region_codecs.RegionFormat`.
        target: the data, ``(S, t, ...)``.
        predicted: the model's output, same shape.
        layout: the canvas layout (region frames and ``t_current``).

    Returns:
        A matplotlib figure (the caller closes it).

    Raises:
        CanvasValidationError: ``target`` and ``predicted`` differ in shape.

    """
    if tuple(target.shape) != tuple(predicted.shape):
        msg = f"prediction_figure({name!r}): target {tuple(target.shape)} and predicted {tuple(predicted.shape)} differ"
        raise CanvasValidationError(msg)
    plt = _pyplot()
    target, predicted = target.detach().float().cpu(), predicted.detach().float().cpu()
    samples, frames = target.shape[:2]
    if fmt.kind == "patches":
        titles = _frame_titles(layout, name, frames)
        fig, axes = plt.subplots(2 * samples, frames, figsize=(1.4 * frames + 0.8, 1.5 * 2 * samples), squeeze=False)
        for s in range(samples):
            lo, hi = float(target[s].min()), float(target[s].max())
            hi = hi if hi > lo else lo + 1.0
            for row, (label, data) in enumerate((("target", target[s]), ("predicted", predicted[s]))):
                for f in range(frames):
                    ax = axes[2 * s + row, f]
                    img, cmap = _image(((data[f] - lo) / (hi - lo)).clamp(0, 1))
                    ax.imshow(img.numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if s == 0 and row == 0:
                        ax.set_title(titles[f], fontsize=7)
                    if f == 0:
                        ax.set_ylabel(f"#{s} {label}", fontsize=7)
    else:
        t0 = layout.region_spec(name).bounds[0]
        times = [t0 + f for f in range(frames)]
        dims = min(target.shape[2], MAX_CURVES)
        colors = plt.get_cmap("tab10")
        fig, axes = plt.subplots(samples, 1, figsize=(6.0, 2.0 * samples + 0.5), squeeze=False)
        for s in range(samples):
            ax = axes[s, 0]
            ax.axvspan(layout.t_current - 0.5, times[-1] + 0.5, color="0.92", zorder=0)
            for d in range(dims):
                label = f"dim {d}" if s == 0 else None
                ax.plot(times, target[s, :, d].numpy(), "-o", color=colors(d % 10), markersize=3, label=label)
                ax.plot(times, predicted[s, :, d].numpy(), "--x", color=colors(d % 10), markersize=4)
            ax.set_ylabel(f"#{s}", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[-1, 0].set_xlabel("canvas frame (shaded: predicted future; solid target, dashed predicted)", fontsize=7)
        if dims:
            axes[0, 0].legend(fontsize=7, loc="upper left", ncol=min(dims, 4), frameon=False)
    fig.suptitle(f"{name} ({fmt.kind}): target vs predicted", fontsize=9)
    fig.tight_layout()
    return fig


class CanvasPictures(Callback):
    """Log the canvas layout, the attention mask and predictions vs targets to TensorBoard.

    When fit starts, rank 0 logs ``canvas/layout``
    (:func:`~canvas_engineering.viz.layout_figure`) and ``canvas/attention_mask``
    (:func:`~canvas_engineering.viz.mask_figure` of the compiled topology). After the first
    validation batch of every ``every_n_epochs``-th epoch (never during the sanity check), the
    model samples the first ``num_samples`` items of that batch with ``num_inference_steps``
    denoising steps (``pl_module.sample``; noise from a generator seeded with ``seed``, and
    the global RNGs left untouched, so training draws the same numbers with or without this
    callback) and rank 0 logs ``predictions/<region>`` for every region of
    ``pl_module.formats`` (:func:`prediction_figure`). Every rank samples, so sharded models
    work. Figures are logged at the trainer's ``global_step``.

    The pictures go to the first ``TensorBoardLogger`` of the trainer. With ``save_dir``, PNG
    files are written there too (``layout.png``, ``attention_mask.png``,
    ``predictions_<region>.png``, the latest overwriting the previous); ``save_png=True``
    without ``save_dir`` writes them to ``pictures/`` in the trainer's ``log_dir`` (the run's
    versioned folder), so two runs never overwrite each other's pictures. Without a
    TensorBoard logger or PNG files, the callback warns once and does nothing.

    Args:
        every_n_epochs: epochs between prediction pictures (>= 1).
        num_samples: batch items drawn (>= 1).
        num_inference_steps: denoising steps of the sampled prediction (>= 1).
        seed: seed of the sampling noise.
        save_dir: also write PNG files to this directory (``None``: see ``save_png``).
        save_png: with ``save_dir=None``, write the PNG files to ``<trainer.log_dir>/pictures``.

    Raises:
        CanvasValidationError: an argument is out of range.
        IncompatibleModelError: at fit start, the LightningModule lacks ``layout``, ``schema``, ``formats``
            or ``sample`` (it should be a ``CanvasModule``).

    Example::

        >>> from lightning import Trainer
        >>> from lightning.pytorch.loggers import TensorBoardLogger
        >>> from canvas_engineering.callbacks import CanvasPictures
        >>> pictures = CanvasPictures(every_n_epochs=1, num_samples=2, num_inference_steps=5)
        >>> trainer = Trainer(logger=TensorBoardLogger("runs"), callbacks=[pictures])  # doctest: +SKIP

    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 2,
        num_inference_steps: int = 5,
        seed: int = 0,
        save_dir: str | os.PathLike[str] | None = None,
        save_png: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_samples", num_samples),
            ("num_inference_steps", num_inference_steps),
        ):
            check_positive_int(value, f"CanvasPictures: {name}")
        check_int(seed, "CanvasPictures: seed")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.save_png = bool(save_png) or save_dir is not None
        self._logger: TensorBoardLogger | None = None
        self._enabled = True
        self._warned = False
        self._last_epoch = -1

    # -- where pictures go ---------------------------------------------------------------

    def _resolve_logger(self, trainer: pl.Trainer) -> None:
        if self.save_png and self.save_dir is None:  # the run's own folder, resolved once the logger exists
            self.save_dir = Path(trainer.log_dir or trainer.default_root_dir) / "pictures"
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        self._enabled = self._logger is not None or self.save_dir is not None
        if not self._enabled and not self._warned:
            got = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "no logger"
            rank_zero_warn(
                f"CanvasPictures: the trainer has no TensorBoardLogger (got {got}); pictures are skipped. "
                "Use lightning.pytorch.loggers.TensorBoardLogger or pass CanvasPictures(save_dir=...) for PNG files."
            )
            self._warned = True

    def _emit(self, trainer: pl.Trainer, tag: str, fig: Figure) -> None:
        """Send a figure to TensorBoard and/or a PNG file (rank 0), then close it."""
        try:
            if self.save_dir is not None:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=100)
                self.save_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(
                    self.save_dir / f"{tag.replace('canvas/', '').replace('/', '_')}.png", buf.getvalue()
                )
            if self._logger is not None:
                self._logger.experiment.add_figure(tag, fig, global_step=trainer.global_step, close=False)
        finally:
            _pyplot().close(fig)

    @staticmethod
    def _check_module(pl_module: pl.LightningModule) -> None:
        missing = [a for a in ("layout", "schema", "formats", "sample") if not hasattr(pl_module, a)]
        if missing:
            msg = (
                f"CanvasPictures needs a CanvasModule-like LightningModule; {type(pl_module).__name__} "
                f"has no {', '.join(missing)}"
            )
            raise IncompatibleModelError(msg)

    # -- hooks ---------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._resolve_logger(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_module(pl_module)
        if not self._enabled or not trainer.is_global_zero:
            return
        layout = pl_module.layout
        self._emit(trainer, "canvas/layout", layout_figure(layout))
        self._emit(trainer, "canvas/attention_mask", mask_figure(compile_topology(layout, pl_module.schema.topology)))

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        epoch = trainer.current_epoch
        if (
            not self._enabled
            or trainer.sanity_checking
            or batch_idx != 0
            or dataloader_idx != 0
            or (epoch + 1) % self.every_n_epochs != 0
            or epoch == self._last_epoch  # once per epoch, however often validation runs
            or not isinstance(batch, Mapping)
        ):
            return
        self._last_epoch = epoch
        sub = {k: v[: self.num_samples] if torch.is_tensor(v) else v for k, v in batch.items()}
        with isolate_rng():
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            predicted = pl_module.sample(sub, num_inference_steps=self.num_inference_steps, generator=generator)
        if not trainer.is_global_zero:
            return
        for name, fmt in pl_module.formats.items():
            if name in predicted and name in sub:
                fig = prediction_figure(name, fmt, sub[name], predicted[name], pl_module.layout)
                self._emit(trainer, f"predictions/{name}", fig)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "every_n_epochs": self.every_n_epochs,
            "num_samples": self.num_samples,
            "num_inference_steps": self.num_inference_steps,
            "seed": self.seed,
            "last_epoch": self._last_epoch,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_epoch = int(state_dict.get("last_epoch", self._last_epoch))
