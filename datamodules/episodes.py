"""``EpisodeDataModule``: your episodes in (LeRobot folders, arrays, Hugging Face datasets), a canvas out.

Each feature of the data becomes a region of the canvas, named by the feature
(``observation.images.top`` works as a region name):

* images -> a patch region (``H / patch_size`` x ``W / patch_size`` cells, format ``"patches"``);
* vectors (states, rewards, ...) -> a one-cell ``"vector"`` region;
* actions (``action`` in the name, or ``kinds={...: "action"}``) -> a one-cell region decoded by
  the action head (format ``"action"``).

Each stream's rate becomes its region's **period** relative to the fastest stream: a camera
at 10 Hz next to joints at 50 Hz gets period 5 (one canvas frame every 5 real frames), so
the canvas spends positions in proportion to the information rate and the compiled masks
know which real frame every cell is. ``rates=`` lowers a stream's rate below what is stored
(LeRobot stores every feature at the dataset's ``fps``; ``rates={"observation.images.top": 10}``
keeps every third frame of a 30 fps camera). The regions are packed on the grid by the typed
layer's shelf packing (:func:`canvas_engineering.typed.packing.pack`) and wired with the
``"causal_temporal"`` topology (HOLD fill: a fast stream reads the latest frame of a slow one)
unless another is given.

Samples are **windows** of ``history + horizon`` frames of the fastest stream that never
cross an episode boundary; ``t_current = history``, so the model sees the history and predicts
the horizon of every output region (all features by default: actions and future
observations; ``context=`` makes features inputs only). Episodes shorter than a window are
skipped and counted in :meth:`EpisodeDataModule.describe`. Train, validation and test are
split **by episode**, deterministically from ``seed``. Every feature is normalised with its
mean and standard deviation (per element for vectors, per channel for images): from the
dataset's ``meta/stats.json`` when present, else computed once from the training episodes
and cached next to the data (``meta/canvas_engineering_stats.json``; in memory for arrays);
:attr:`EpisodeDataModule.normalization` holds them for the model so inference can undo them.

Nothing is decoded up front: items read their window from the source (see
:mod:`canvas_engineering.datamodules.episode_sources`), with small per-process caches, so
``num_workers > 0`` and DDP ranks each read only the windows they sample.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from canvas_engineering.datamodules.base import CanvasDataModule, Split
from canvas_engineering.datamodules.episode_sources import (
    ArraySource,
    EpisodeSource,
    FeatureKind,
    HFDatasetSource,
)
from torch.utils.data import Dataset

from canvas_engineering._atomic import atomic_write_text
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.errors import EpisodeDataError
from canvas_engineering.models.region_codecs import RegionFormat
from canvas_engineering.typed.packing import PackItem, auto_size, pack
from canvas_engineering.validation import is_finite_number

__all__ = ["EpisodeDataModule", "EpisodeWindows", "StreamPlan"]

#: Standard deviations below this are treated as this (a constant feature is centred, not blown up).
MIN_STD = 1e-6
#: Episodes read to compute image statistics when the data has none (evenly spaced training episodes).
IMAGE_STATS_EPISODES = 32


@dataclass(frozen=True)
class StreamPlan:
    """How one feature is sampled into its region.

    Attributes:
        name: feature and region name.
        kind: ``"image"``, ``"vector"`` or ``"action"``.
        rate: the rate used (Hz), at most the stored rate.
        step: stored frames per used frame (``stored rate / rate``).
        period: real frames (of the fastest stream) per canvas frame.
        frames: canvas frames of the region in one window, ``ceil(window / period)``.

    """

    name: str
    kind: FeatureKind
    rate: float
    step: int
    period: int
    frames: int


def _integer_ratio(a: float, b: float) -> int | None:
    ratio = a / b
    k = round(ratio)
    return k if k >= 1 and abs(ratio - k) <= 1e-6 * max(1.0, ratio) else None


class EpisodeWindows(Dataset):
    """Windows of episodes, read lazily: item ``i`` is window ``(episode[i], start[i])``.

    Items are dicts of float32 tensors keyed by region (feature) name, normalised.
    """

    def __init__(
        self,
        source: EpisodeSource,
        streams: Sequence[StreamPlan],
        episodes: np.ndarray,
        starts: np.ndarray,
        stats: Mapping[str, Mapping[str, np.ndarray]] | None,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> None:
        self.source, self.streams = source, list(streams)
        self.episodes, self.starts = episodes, starts
        self.shapes = dict(shapes)
        self.norm = {}
        for s in self.streams:
            if stats is not None:
                mean = np.asarray(stats[s.name]["mean"], dtype=np.float32)
                std = np.maximum(np.asarray(stats[s.name]["std"], dtype=np.float32), MIN_STD)
                view = (-1, 1, 1) if s.kind == "image" and len(self.shapes[s.name]) == 4 else (-1,)
                self.norm[s.name] = (torch.from_numpy(mean.reshape(view)), torch.from_numpy(std.reshape(view)))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        episode, start = int(self.episodes[index]), int(self.starts[index])
        item = {}
        for s in self.streams:
            first = start // s.period  # this stream's first frame (at its used rate)
            x = self.source.read(episode, s.name, first * s.step, (first + s.frames) * s.step, s.step)
            if len(x) != s.frames:
                msg = f"{self.source.where(episode, s.name)}: read {len(x)} frames of a window, expected {s.frames}"
                raise EpisodeDataError(msg, feature=s.name)
            # np.array copies: reads may be views of a cache
            t = torch.from_numpy(np.array(x, dtype=np.float32)).reshape(self.shapes[s.name])
            if s.name in self.norm:
                mean, std = self.norm[s.name]
                t = (t - mean) / std
            item[s.name] = t
        return item


class EpisodeDataModule(CanvasDataModule):
    """Episodes from a LeRobot folder, arrays or a Hugging Face dataset, windowed onto a canvas.

    Build it with ``EpisodeDataModule(root=PATH, ...)`` (a LeRobot v2.x/v3.0 folder; also the
    CLI: ``--data=episodes --data.root=PATH``), :meth:`from_arrays` or :meth:`from_hf_dataset`.
    See the module docstring for how features become regions.

    Args:
        root: a LeRobot-format dataset folder.
        history: context frames of the fastest stream per window (``t_current``).
        horizon: predicted frames of the fastest stream per window.
        stride: fastest-stream frames between window starts (default: the least common
            multiple of the periods, the smallest stride that keeps slow streams aligned; must
            be a multiple of it).
        features: the features to use (default: every numeric and image feature).
        kinds: feature -> ``"image"``/``"vector"``/``"action"`` where the guess is wrong.
        rates: feature -> rate in Hz to use (at most the stored rate, dividing it).
        context: features that are inputs only (no loss); the others are outputs.
        loss_weights: feature -> loss weight (default 1).
        topology: ``"causal_temporal"`` (default), ``"dense"``, or a ``CanvasTopology`` over
            the feature names.
        patch_size: image patch side in pixels (image sides must be multiples).
        val_fraction: share of the episodes held out for validation (at least one episode).
        test_fraction: share held out for testing (at least one episode).
        normalize: normalise every feature by its mean and standard deviation.
        batch_size: windows per batch.
        num_workers: DataLoader workers.
        seed: seed of the episode split and the training shuffle.
        d_model: canvas token width.
        source: an :class:`EpisodeSource` instead of ``root`` (what the classmethods pass).

    Raises:
        CanvasValidationError: a bad argument, named with its value.
        EpisodeDataError: the data cannot be used (names the file, episode and feature).

    """

    def __init__(
        self,
        root: str | None = None,
        history: int = 4,
        horizon: int = 2,
        stride: int | None = None,
        features: list[str] | None = None,
        kinds: dict[str, Literal["image", "vector", "action"]] | None = None,
        rates: dict[str, float] | None = None,
        context: list[str] | None = None,
        loss_weights: dict[str, float] | None = None,
        topology: Literal["causal_temporal", "dense"] | CanvasTopology = "causal_temporal",
        patch_size: int = 8,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        normalize: bool = True,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        d_model: int = 64,
        source: EpisodeSource | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, d_model=d_model)
        for store in (self.hparams, self._hparams_initial):
            store.pop("source", None)  # data, not a hyperparameter
        self.check_int("history", history, minimum=1)
        self.check_int("horizon", horizon, minimum=1)
        if stride is not None:
            self.check_int("stride", stride, minimum=1)
        self.check_int("patch_size", patch_size, minimum=1)
        self.check_float("val_fraction", val_fraction, minimum=0.0, maximum=0.5)
        self.check_float("test_fraction", test_fraction, minimum=0.0, maximum=0.5)
        self.check_bool("normalize", normalize)
        if not isinstance(topology, CanvasTopology):
            self.check_choice("topology", topology, ("causal_temporal", "dense"))
        if (root is None) == (source is None):
            self._fail("root", root, "must be given (a LeRobot dataset folder), or use from_arrays/from_hf_dataset")
        if source is None:
            if not isinstance(root, (str, Path)) or not str(root):
                self._fail("root", root, "must be a path to a LeRobot dataset folder")
            from canvas_engineering.datamodules.lerobot_source import LeRobotSource

            source = LeRobotSource(root, features=features, kinds=kinds)
        elif not isinstance(source, EpisodeSource):
            self._fail("source", type(source).__name__, "must be an EpisodeSource")
        self.source = source
        self.history, self.horizon, self.patch_size = history, horizon, patch_size
        self.fractions = {"val": float(val_fraction), "test": float(test_fraction)}
        self.normalize = normalize
        self.topology_choice = topology
        self.streams = self._plan_streams(rates or {})
        period_lcm = math.lcm(*(s.period for s in self.streams))
        if stride is not None and stride % period_lcm:
            self._fail("stride", stride, f"must be a multiple of {period_lcm} (the periods' least common multiple)")
        self.stride = stride or period_lcm
        names = list(self.source.features)
        self.context = self._feature_list("context", context or [], names)
        self.loss_weights = self._weights(loss_weights or {}, names)
        self._split_episodes()
        self._stats: dict[str, dict[str, np.ndarray]] | None = None
        self._init_canvas()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        episodes: Sequence[Mapping[str, Any]],
        rates: Mapping[str, float],
        kinds: Mapping[str, FeatureKind] | None = None,
        **kwargs: Any,
    ) -> EpisodeDataModule:
        """Build from in-memory episodes ``[{feature: array (frames, ...)}]``, each feature at ``rates[feature]`` Hz.

        Images are ``(frames, H, W, C)`` or ``(frames, C, H, W)`` (uint8, or floats in [0, 1]);
        other features ``(frames,)`` or ``(frames, ...)``. ``kwargs`` are the other arguments
        of :class:`EpisodeDataModule` (``history``, ``horizon``, ``context``, ...).
        """
        return cls(source=ArraySource(episodes, rates, kinds), **kwargs)

    @classmethod
    def from_hf_dataset(
        cls,
        dataset: Any,
        fps: float,
        episode_column: str = "episode_index",
        features: Sequence[str] | None = None,
        kinds: Mapping[str, FeatureKind] | None = None,
        **kwargs: Any,
    ) -> EpisodeDataModule:
        """Build from a ``datasets.Dataset`` with one row per frame at ``fps`` and an episode index column.

        ``rates=`` (in ``kwargs``) lowers a stream's rate as for a LeRobot folder.
        """
        return cls(source=HFDatasetSource(dataset, fps, episode_column, features, kinds), **kwargs)

    def _feature_list(self, argument: str, values: object, names: list[str]) -> list[str]:
        if not isinstance(values, (list, tuple)):
            self._fail(argument, values, "must be a list of feature names")
        for v in values:
            if v not in names:
                self._fail(argument, values, f"names {v!r}, which is not a feature; features: {names}")
        return list(values)

    def _weights(self, weights: object, names: list[str]) -> dict[str, float]:
        if not isinstance(weights, Mapping):
            self._fail("loss_weights", weights, "must map feature names to weights")
        for name, w in weights.items():
            if name not in names:
                self._fail("loss_weights", dict(weights), f"names {name!r}, which is not a feature; features: {names}")
            self.check_float(f"loss_weights[{name!r}]", w, minimum=0.0)
        return {name: float(weights.get(name, 1.0)) for name in names}

    def _plan_streams(self, rates: object) -> list[StreamPlan]:
        if not isinstance(rates, Mapping):
            self._fail("rates", rates, "must map feature names to rates in Hz")
        specs = self.source.features
        for name, rate in rates.items():
            if name not in specs:
                self._fail("rates", dict(rates), f"names {name!r}, which is not a feature; features: {list(specs)}")
            if not is_finite_number(rate) or rate <= 0:
                self._fail(f"rates[{name!r}]", rate, "must be a finite rate in Hz > 0")
            step = _integer_ratio(specs[name].rate, float(rate))
            if step is None:
                self._fail(
                    f"rates[{name!r}]", rate,
                    f"must divide the stored rate {specs[name].rate:g} Hz (keep every k-th frame)",
                )
        used = {n: float(rates.get(n, s.rate)) for n, s in specs.items()}
        fastest = max(used.values())
        window = self.history + self.horizon
        streams = []
        for name, spec in specs.items():
            period = _integer_ratio(fastest, used[name])
            if period is None:
                msg = (
                    f"feature {name!r} at {used[name]:g} Hz: the fastest stream ({fastest:g} Hz) must be an integer "
                    "multiple of every rate (the canvas period); pass rates= to resample"
                )
                raise EpisodeDataError(msg, feature=name)
            step = _integer_ratio(spec.rate, used[name]) or 1
            streams.append(StreamPlan(name, spec.kind, used[name], step, period, -(-window // period)))
            if spec.kind == "image":
                c, h, w = spec.shape
                if h % self.patch_size or w % self.patch_size:
                    self._fail("patch_size", self.patch_size, f"must divide feature {name!r}'s image size {h}x{w}")
        return streams

    def _split_episodes(self) -> None:
        """Episodes -> splits (seeded permutation), then every split's windows (vectorised)."""
        ids = self.source.episode_ids
        n = len(ids)
        order = np.random.default_rng([int(self.seed), 7]).permutation(n)
        held = {k: (max(1, round(n * f)) if f > 0 else 0) for k, f in self.fractions.items()}
        if held["val"] + held["test"] >= n:
            msg = (
                f"EpisodeDataModule: {n} episode(s) cannot be split into train, val ({held['val']}) and "
                f"test ({held['test']}) by episode; lower val_fraction/test_fraction or add episodes"
            )
            raise EpisodeDataError(msg)
        self.split_episodes = {
            "val": np.sort(order[: held["val"]]),
            "test": np.sort(order[held["val"] : held["val"] + held["test"]]),
            "train": np.sort(order[held["val"] + held["test"] :]),
        }
        # last valid start per episode: every stream must hold its frames of the window
        last = None
        for s in self.streams:
            frames = -(-self.source.frames(s.name) // s.step)  # frames at the used rate
            stream_last = (frames - s.frames) * s.period
            last = stream_last if last is None else np.minimum(last, stream_last)
        counts = np.where(last >= 0, last // self.stride + 1, 0).astype(np.int64)
        self.windows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.skipped: dict[str, int] = {}
        for split, episodes in self.split_episodes.items():
            c = counts[episodes]
            total = int(c.sum())
            offsets = np.repeat(np.cumsum(c) - c, c)
            starts = (np.arange(total, dtype=np.int64) - offsets) * self.stride
            self.windows[split] = (np.repeat(episodes, c), starts)
            self.skipped[split] = int((c == 0).sum())

    # -- the canvas -----------------------------------------------------------------------------

    def _cells(self, name: str) -> tuple[int, int]:
        spec = self.source.features[name]
        if spec.kind == "image":
            return spec.shape[1] // self.patch_size, spec.shape[2] // self.patch_size
        return 1, 1

    def build_schema(self) -> CanvasSchema:
        """Pack one region per feature (typed-layer packing) and wire the topology."""
        items = [PackItem(s.name, *self._cells(s.name)) for s in self.streams]
        H, W = auto_size(items, "packed")
        placed = pack(items, H, W, "packed").placements
        regions = {}
        for s in self.streams:
            h0, h1, w0, w1 = placed[s.name]
            regions[s.name] = RegionSpec(
                bounds=(0, s.frames, h0, h1, w0, w1),
                period=s.period,
                is_output=s.name not in self.context,
                loss_weight=self.loss_weights[s.name],
                semantic_type=s.name.replace(".", " ").replace("_", " "),
            )
        window = self.history + self.horizon
        layout = CanvasLayout(T=window, H=H, W=W, d_model=self.d_model, regions=regions, t_current=self.history)
        if isinstance(self.topology_choice, CanvasTopology):
            topology = self.topology_choice
        else:
            topology = self.topology_for(self.topology_choice, list(regions))
        meta = {"datamodule": "episodes", "source": self.source.describe_source(),
                "rates": {s.name: s.rate for s in self.streams}}
        return CanvasSchema(layout, topology, metadata=meta)

    def build_region_formats(self) -> dict[str, RegionFormat]:
        """Images as patches, vectors as vectors, actions through the action head."""
        out = {}
        for s in self.streams:
            spec = self.source.features[s.name]
            if s.kind == "image":
                out[s.name] = RegionFormat("patches", channels=spec.shape[0], patch_size=self.patch_size)
            else:
                out[s.name] = RegionFormat("vector" if s.kind == "vector" else "action", dim=spec.shape[0])
        return out

    # -- normalisation --------------------------------------------------------------------------

    def _cache_key(self) -> str:
        blob = json.dumps(
            {"train": self.split_episodes["train"].tolist(), "streams": [s.__dict__ for s in self.streams]},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def statistics(self) -> dict[str, dict[str, np.ndarray]]:
        """Feature -> ``{"mean", "std"}`` (per element, per channel for images), computed once.

        From the source's stored statistics when it has them, else from the cache next to the
        data, else computed from the training episodes (vectors: all of them; images: up to
        :data:`IMAGE_STATS_EPISODES` evenly spaced) and cached.
        """
        if self._stats is not None:
            return self._stats
        stored = self.source.stats()
        if stored is not None:
            self._stats = stored
            return stored
        cache, key = self.source.cache_path(), self._cache_key()
        if cache is not None and Path(cache).is_file():
            try:
                data = json.loads(Path(cache).read_text(encoding="utf-8"))
                if data.get("key") == key:
                    self._stats = {n: {k: np.asarray(v) for k, v in d.items()} for n, d in data["stats"].items()}
                    return self._stats
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                pass  # a damaged cache is recomputed and rewritten
        self._stats = self._compute_statistics()
        if cache is not None:
            payload = {"key": key, "stats": {n: {k: v.tolist() for k, v in d.items()} for n, d in self._stats.items()}}
            atomic_write_text(cache, json.dumps(payload, allow_nan=False))
        return self._stats

    def _compute_statistics(self) -> dict[str, dict[str, np.ndarray]]:
        train = self.split_episodes["train"]
        out = {}
        for s in self.streams:
            episodes = train
            if s.kind == "image" and len(train) > IMAGE_STATS_EPISODES:
                episodes = train[np.linspace(0, len(train) - 1, IMAGE_STATS_EPISODES).round().astype(int)]
            total = sq = None
            count = 0
            for e in episodes:  # streaming: one episode's frames at a time
                n = int(self.source.frames(s.name)[e])
                x = self.source.read(int(e), s.name, 0, n, s.step).astype(np.float64)
                flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1) if x.ndim == 4 else x.reshape(len(x), -1).T
                total = flat.sum(1) if total is None else total + flat.sum(1)
                sq = (flat**2).sum(1) if sq is None else sq + (flat**2).sum(1)
                count += flat.shape[1]
            mean = total / count
            std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
            out[s.name] = {"mean": mean, "std": std}
        return out

    @property
    def normalization(self) -> dict[str, dict[str, list[float]]]:
        """Feature -> ``{"mean": [...], "std": [...]}`` as applied to the batches (JSON-ready; empty if off).

        Store it with the model (``CanvasModule(normalization=...)``) so predictions can be
        mapped back to data units: ``x = x_normalised * max(std, MIN_STD) + mean``.
        """
        if not self.normalize:
            return {}
        return {
            n: {"mean": d["mean"].tolist(), "std": np.maximum(d["std"], MIN_STD).tolist()}
            for n, d in self.statistics().items()
        }

    # -- data -----------------------------------------------------------------------------------

    def build_dataset(self, split: Split) -> EpisodeWindows:
        """Return the split's windows, read lazily."""
        episodes, starts = self.windows[split]
        stats = self.statistics() if self.normalize else None
        return EpisodeWindows(self.source, self.streams, episodes, starts, stats, self.sample_shapes())

    def baselines(self, split: Split, dataset: Dataset) -> dict[str, dict[str, torch.Tensor]]:
        """``"mean"``: every frame predicted as the feature's mean (0 after normalisation), no item read."""
        shapes = self.sample_shapes()
        means = {}
        for s in self.streams:
            mean = torch.zeros(shapes[s.name])
            if not self.normalize:
                m = torch.as_tensor(self.statistics()[s.name]["mean"], dtype=torch.float32)
                mean = mean + (m.view(-1, 1, 1) if s.kind == "image" else m)
            means[s.name] = mean
        return {"mean": means}

    def describe(self) -> str:
        """Source, the feature -> region -> rate -> period -> role table, windows and skipped episodes per split."""
        layout = self.schema.layout
        lines = [f"EpisodeDataModule: {self.source.describe_source()}"]
        header = f"  {'feature':<28}{'region cells':<14}{'kind':<8}{'rate':>8}  {'period':>6}  {'frames':>6}  role"
        lines.append(header)
        for s in self.streams:
            spec = layout.region_spec(s.name)
            h0, h1, w0, w1 = spec.bounds[2:]
            role = "context" if s.name in self.context else f"output (weight {self.loss_weights[s.name]:g})"
            cells = f"{h1 - h0}x{w1 - w0} @({h0},{w0})"
            lines.append(
                f"  {s.name:<28}{cells:<14}{s.kind:<8}{s.rate:>6g}Hz  {s.period:>6}  {s.frames:>6}  {role}"
            )
        lines.append(
            f"  window: {self.history} history + {self.horizon} horizon frames of the fastest stream, "
            f"stride {self.stride}; t_current={layout.t_current}"
        )
        for split in ("train", "val", "test"):
            episodes, _ = self.windows[split]
            lines.append(
                f"  {split:<5}: {len(self.split_episodes[split])} episodes, {len(episodes)} windows, "
                f"{self.skipped[split]} episode(s) skipped (shorter than a window)"
            )
        lines.append(
            f"  canvas T={layout.T} H={layout.H} W={layout.W} d_model={layout.d_model}: "
            f"{layout.num_positions} positions, {len(self.schema.topology.connections)} connections"
        )
        return "\n".join(lines)
