"""``MultiFrequencyDataModule``: three synthetic streams at different rates.

A ``fast`` stream is sampled every real frame, a ``medium`` one every 2 frames and a ``slow``
one every 4. Each is a ``dim``-vector per sample time: a sum of ``components`` sinusoids per
channel (frequencies below the stream's Nyquist limit, fixed by ``seed``; amplitudes and
phases drawn per sample) plus Gaussian noise. The fast and medium streams also carry
``coupling`` times the slow stream (held), so reading the slow region helps predict them.

Two canvas allocations of the same data:

* ``"bandwidth"``: each region's ``period`` is its stream's (1, 2, 4), so the slow region has
  ``frames / 4`` canvas frames: positions in proportion to the information rate.
* ``"flat"``: every region has period 1 and ``frames`` canvas frames; the medium and slow
  streams are upsampled by holding each sample (the baseline of the allocation comparison).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from canvas_engineering.datamodules.base import CanvasDataModule, Split, TensorDictDataset, TopologyKind, split_rng

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.models.region_codecs import RegionFormat

__all__ = ["STREAM_PERIODS", "MultiFrequencyDataModule", "generate_multi_frequency"]

#: stream (region) name -> real frames between two samples of the stream
STREAM_PERIODS: dict[str, int] = {"fast": 1, "medium": 2, "slow": 4}


def generate_multi_frequency(
    rng: np.random.Generator,
    task_rng: np.random.Generator,
    n: int,
    *,
    frames: int,
    dim: int,
    components: int,
    noise: float,
    coupling: float,
) -> dict[str, torch.Tensor]:
    """``n`` samples: stream name -> ``(n, frames // period, dim)`` float32, at the stream's own rate.

    ``task_rng`` draws the frequencies (shared by every split); ``rng`` draws the per-sample
    amplitudes, phases and noise.
    """
    t = np.arange(frames, dtype=np.float64)
    slow_period = STREAM_PERIODS["slow"]
    out: dict[str, np.ndarray] = {}
    for name in ("slow", "medium", "fast"):  # slow first: the others are coupled to it
        period = STREAM_PERIODS[name]
        nyquist = 0.5 / period  # cycles per real frame
        freqs = task_rng.uniform(0.1 * nyquist, 0.8 * nyquist, size=(dim, components))
        amps = rng.uniform(0.5, 1.0, size=(n, dim, components)) / np.sqrt(components)
        phases = rng.uniform(0.0, 2 * np.pi, size=(n, dim, components))
        times = t[::period]  # (frames // period,) sample times of this stream
        angle = 2 * np.pi * freqs[None, None] * times[:, None, None] + phases[:, None]  # (n, t_s, dim, comp)
        signal = (amps[:, None] * np.sin(angle)).sum(-1)  # (n, t_s, dim)
        if name != "slow":
            held = np.repeat(out["slow"], slow_period, axis=1)[:, :frames]  # (n, frames, dim), slow held
            signal = signal + coupling * held[:, ::period]
        out[name] = signal + noise * rng.standard_normal(signal.shape)
    return {name: torch.from_numpy(out[name]).float() for name in STREAM_PERIODS}


class MultiFrequencyDataModule(CanvasDataModule):
    """Fast, medium and slow synthetic streams, on a bandwidth-proportional or flat canvas.

    Canvas (defaults, ``frames=16``): ``H=1``, ``W=3``, one position per stream per canvas
    frame (``positions`` more in a row if asked); ``t_current=0`` (every frame is generated);
    causal-temporal topology (HOLD fill: a fast query reads the latest slow frame).

    Batch (defaults, ``B = batch_size``)::

        allocation="bandwidth"                              allocation="flat"
        fast    (B, 16, 4) -> "fast"   period 1, 16 frames    (B, 16, 4) period 1
        medium  (B, 8, 4)  -> "medium" period 2, 8 frames     (B, 16, 4) period 1 (each sample held 2x)
        slow    (B, 4, 4)  -> "slow"   period 4, 4 frames     (B, 16, 4) period 1 (each sample held 4x)

    ``t_current`` counts canvas frames of the layout: with ``"bandwidth"``, the slow region's
    canvas frames are ``0 .. frames/4 - 1``, so a ``t_current`` past them makes the slow
    stream pure context (a warning says so).

    Args:
        frames: real frames per sample (a multiple of 4, >= 4).
        dim: channels per stream (>= 1).
        components: sinusoids per channel (>= 1).
        noise: standard deviation of the additive noise (>= 0).
        coupling: weight of the (held) slow stream added to the fast and medium ones.
        allocation: ``"bandwidth"`` (periods 1/2/4) or ``"flat"`` (all period 1, held).
        positions: canvas positions per stream per canvas frame (>= 1).
        t_current: first future canvas frame (0: generate everything).
        topology: ``"causal_temporal"`` (HOLD) or ``"dense"``.
        n_train: training samples.
        n_val: validation samples.
        n_test: test (and predict) samples.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the data (frequencies included) and of the training shuffle.
        d_model: canvas token width.

    Raises:
        CanvasValidationError: a bad argument, named with its value.

    """

    def __init__(
        self,
        frames: int = 16,
        dim: int = 4,
        components: int = 2,
        noise: float = 0.05,
        coupling: float = 0.5,
        allocation: Literal["bandwidth", "flat"] = "bandwidth",
        positions: int = 1,
        t_current: int = 0,
        topology: TopologyKind = "causal_temporal",
        n_train: int = 512,
        n_val: int = 64,
        n_test: int = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        d_model: int = 64,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, d_model=d_model)
        slow = STREAM_PERIODS["slow"]
        self.check_int("frames", frames, minimum=slow)
        if frames % slow:
            self._fail("frames", frames, f"must be a multiple of the slow stream's period {slow}")
        self.check_int("dim", dim, minimum=1)
        self.check_int("components", components, minimum=1)
        self.check_float("noise", noise, minimum=0.0)
        self.check_float("coupling", coupling)
        self.check_choice("allocation", allocation, ("bandwidth", "flat"))
        self.check_int("positions", positions, minimum=1)
        self.check_int("t_current", t_current, minimum=0, maximum=frames)
        self.check_choice("topology", topology, ("causal_temporal", "dense"))
        for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            self.check_int(name, value, minimum=1)
        self.frames, self.dim, self.components = frames, dim, components
        self.noise, self.coupling = float(noise), float(coupling)
        self.allocation, self.positions, self.t_current, self.topology = allocation, positions, t_current, topology
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._init_canvas()
        layout = self.schema.layout
        past = [
            f"{name!r} (last real frame {layout.real_frame(name, spec.num_frames - 1)}, period {spec.period})"
            for name, spec in layout.regions.items()
            if t_current > layout.real_frame(name, spec.num_frames - 1)
        ]
        if past:  # output_mask counts real frames: a stream whose last frame is before t_current has no future
            warnings.warn(
                f"MultiFrequencyDataModule: t_current={t_current} (a real frame) is past region(s) "
                f"{', '.join(past)}: those streams are context only, with no loss",
                stacklevel=2,
            )

    def region_period(self, name: str) -> int:
        """Canvas period of a stream's region (1 for every stream when ``allocation="flat"``)."""
        return STREAM_PERIODS[name] if self.allocation == "bandwidth" else 1

    def build_schema(self) -> CanvasSchema:
        """One row; each stream a column block of ``positions`` wide, ``frames / period`` canvas frames."""
        p = self.positions
        regions = {}
        for i, name in enumerate(STREAM_PERIODS):
            period = self.region_period(name)
            regions[name] = RegionSpec(bounds=(0, self.frames // period, 0, 1, i * p, (i + 1) * p), period=period)
        layout = CanvasLayout(
            T=self.frames, H=1, W=len(regions) * p, d_model=self.d_model, regions=regions, t_current=self.t_current
        )
        topology = self.topology_for(self.topology, list(layout.regions))
        return CanvasSchema(layout, topology, metadata={"datamodule": "multi_frequency", "allocation": self.allocation})

    def build_region_formats(self) -> dict[str, RegionFormat]:
        """Give every stream a ``dim``-vector per canvas frame."""
        return {name: RegionFormat("vector", dim=self.dim) for name in STREAM_PERIODS}

    def build_dataset(self, split: Split) -> TensorDictDataset:
        """Generate the split; in ``"flat"`` allocation, hold each sample ``period`` frames."""
        streams = generate_multi_frequency(
            split_rng(self.seed, split),
            np.random.default_rng([self.seed, 1000]),  # the task (frequencies): same for every split
            self.sizes[split],
            frames=self.frames,
            dim=self.dim,
            components=self.components,
            noise=self.noise,
            coupling=self.coupling,
        )
        if self.allocation == "flat":
            streams = {
                name: x.repeat_interleave(STREAM_PERIODS[name], dim=1)  # (n, frames, dim), zero-order hold
                for name, x in streams.items()
            }
        return TensorDictDataset(streams)
