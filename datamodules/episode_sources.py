"""Episode sources: where :class:`~canvas_engineering.datamodules.EpisodeDataModule` reads from.

A source knows its features (name, kind, per-frame shape, native rate in Hz) and how many
frames each episode holds per feature, and reads a range of one episode's frames on request:
nothing is loaded up front, so memory does not grow with the number of episodes. Three kinds:

* :class:`ArraySource`: episodes held by the caller (numpy arrays or torch tensors), each
  feature at its own rate;
* :class:`HFDatasetSource`: a Hugging Face ``datasets.Dataset`` with an episode index column,
  one row per frame;
* :class:`~canvas_engineering.datamodules.lerobot_source.LeRobotSource`: a LeRobot-format folder.

Frames come back as float32 numpy arrays: vectors ``(n, dim)``, images ``(n, C, H, W)`` in
``[0, 1]``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from canvas_engineering.errors import EpisodeDataError
from canvas_engineering.validation import is_finite_number

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "ArraySource",
    "EpisodeSource",
    "FeatureKind",
    "FeatureSpec",
    "HFDatasetSource",
    "guess_kind",
    "image_frames",
]

#: What a feature becomes on the canvas: a patch region, a vector region, or an action region.
FeatureKind = Literal["image", "vector", "action"]

#: Per-frame columns of LeRobot tables that index the data rather than being data.
BOOKKEEPING_COLUMNS: frozenset[str] = frozenset(
    {"timestamp", "frame_index", "episode_index", "index", "task_index", "next.done", "next.success"}
)


@dataclass(frozen=True)
class FeatureSpec:
    """One stream of an episode dataset.

    Args:
        name: the feature name (``observation.images.top``; dots are fine).
        kind: ``"image"``, ``"vector"`` or ``"action"``.
        shape: one frame's shape: ``(C, H, W)`` for images, ``(dim,)`` otherwise.
        rate: native sampling rate in Hz (frames per second).

    """

    name: str
    kind: FeatureKind
    shape: tuple[int, ...]
    rate: float


def guess_kind(name: str, frame_ndim: int) -> FeatureKind:
    """Kind of a feature from its name and the number of dimensions of one frame."""
    if frame_ndim >= 2:
        return "image"
    return "action" if "action" in name.split(".")[-1] or name.startswith("action") else "vector"


def image_frames(frames: np.ndarray) -> np.ndarray:
    """``(n, H, W, C)`` / ``(n, C, H, W)`` / ``(n, H, W)`` uint8 or float -> ``(n, C, H, W)`` float32 in [0, 1]."""
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    out = x.astype(np.float32)
    if x.dtype == np.uint8:
        out /= 255.0
    return np.ascontiguousarray(out)


class EpisodeSource(ABC):
    """Where episodes come from: features, frames per episode, and lazy reads."""

    #: feature name -> spec, in the order regions are packed
    features: dict[str, FeatureSpec]

    @property
    @abstractmethod
    def episode_ids(self) -> np.ndarray:
        """The dataset's own index of each episode, ``(num_episodes,)`` int64."""

    @abstractmethod
    def frames(self, feature: str) -> np.ndarray:
        """Frames of ``feature`` in each episode (at its native rate), ``(num_episodes,)`` int64."""

    @abstractmethod
    def read(self, episode: int, feature: str, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Frames ``start, start + step, ... < stop`` of episode number ``episode`` (a position, not an id)."""

    def where(self, episode: int, feature: str) -> str:
        """Where an episode's feature lives, for messages."""
        return f"episode {int(self.episode_ids[episode])}, feature {feature!r}"

    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """Return stored normalisation statistics (``{"mean", "std"}`` per feature), or None."""
        return None

    def cache_path(self) -> str | None:
        """Return a file next to the data to cache computed statistics in, or None (kept in memory)."""
        return None

    def describe_source(self) -> str:
        """One line: what the data is."""
        return f"{type(self).__name__}: {len(self.episode_ids)} episodes"

    def _check_finite(self, x: np.ndarray, episode: int, feature: str) -> np.ndarray:
        if not np.isfinite(x).all():
            bad = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)).all(1))[0, 0]) if len(x) else 0
            msg = f"{self.where(episode, feature)}: non-finite value at read frame {bad}"
            raise EpisodeDataError(msg, episode=int(self.episode_ids[episode]), feature=feature)
        return x


def _as_numpy(value: object, where: str) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    msg = f"{where} must be a numpy array or a torch tensor of shape (frames, ...), got {type(value).__name__}"
    raise EpisodeDataError(msg)


class ArraySource(EpisodeSource):
    """Episodes held in memory: a list of ``{feature: array (frames, ...)}`` and a rate per feature.

    Args:
        episodes: the episodes; every episode has the same features with the same per-frame shapes.
        rates: feature -> sampling rate in Hz (every feature, finite and > 0).
        kinds: feature -> ``"image"``/``"vector"``/``"action"`` where the guess (images: 2+
            dimensions per frame; ``action`` in the name: action; else vector) is wrong.

    Raises:
        EpisodeDataError: naming the episode and feature: a missing or extra feature, a shape that
            differs between episodes, a non-finite value, a rate missing or not a positive number.

    """

    def __init__(
        self,
        episodes: Sequence[Mapping[str, Any]],
        rates: Mapping[str, float],
        kinds: Mapping[str, FeatureKind] | None = None,
    ) -> None:
        if isinstance(episodes, Mapping) or not isinstance(episodes, Sequence) or not episodes:
            msg = "from_arrays: episodes must be a non-empty list of {feature: array} mappings"
            raise EpisodeDataError(msg)
        if not isinstance(rates, Mapping):
            msg = f"from_arrays: rates must map each feature to its rate in Hz, got {type(rates).__name__}"
            raise EpisodeDataError(msg)
        kinds = dict(kinds or {})
        first = episodes[0]
        if not isinstance(first, Mapping) or not first:
            msg = "from_arrays: episode 0 must be a non-empty {feature: array} mapping"
            raise EpisodeDataError(msg, episode=0)
        names = list(first)
        for name in rates:
            if name not in first:
                msg = f"from_arrays: rates names feature {name!r}, which episode 0 does not have; features: {names}"
                raise EpisodeDataError(msg, feature=name)
        for name in kinds:
            if name not in first:
                msg = f"from_arrays: kinds names feature {name!r}, which episode 0 does not have; features: {names}"
                raise EpisodeDataError(msg, feature=name)
        self._episodes: list[dict[str, np.ndarray]] = []
        specs: dict[str, FeatureSpec] = {}
        for e, episode in enumerate(episodes):
            if not isinstance(episode, Mapping) or set(episode) != set(names):
                got = sorted(episode) if isinstance(episode, Mapping) else type(episode).__name__
                msg = f"from_arrays: episode {e} has features {got}, episode 0 has {sorted(names)}"
                raise EpisodeDataError(msg, episode=e)
            arrays = {}
            for name in names:
                x = _as_numpy(episode[name], f"from_arrays: episode {e}, feature {name!r}")
                if x.ndim == 0 or x.shape[0] == 0:
                    msg = f"from_arrays: episode {e}, feature {name!r} must have at least one frame, got {x.shape}"
                    raise EpisodeDataError(msg, episode=e, feature=name)
                if x.dtype.kind not in "uifb":
                    msg = f"from_arrays: episode {e}, feature {name!r} must be numeric, got dtype {x.dtype}"
                    raise EpisodeDataError(msg, episode=e, feature=name)
                if x.ndim == 1:
                    x = x[:, None]
                arrays[name] = x
                if e == 0:
                    kind = kinds.get(name, guess_kind(name, x.ndim - 1))
                    if kind not in ("image", "vector", "action"):
                        msg = f"from_arrays: kinds[{name!r}]={kind!r} must be 'image', 'vector' or 'action'"
                        raise EpisodeDataError(msg, feature=name)
                    rate = rates.get(name)
                    if not is_finite_number(rate) or rate <= 0:
                        msg = f"from_arrays: rates[{name!r}]={rate!r} must be a finite rate in Hz > 0"
                        raise EpisodeDataError(msg, feature=name)
                    shape = image_frames(x[:1]).shape[1:] if kind == "image" else (int(np.prod(x.shape[1:])),)
                    specs[name] = FeatureSpec(name, kind, tuple(int(n) for n in shape), float(rate))
                elif x.shape[1:] != self._episodes[0][name].shape[1:]:
                    msg = (
                        f"from_arrays: episode {e}, feature {name!r} has frames of shape {x.shape[1:]}, "
                        f"episode 0 has {self._episodes[0][name].shape[1:]}"
                    )
                    raise EpisodeDataError(msg, episode=e, feature=name)
                if x.dtype.kind == "f" and not np.isfinite(x).all():
                    frame = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)).all(1))[0, 0])
                    msg = f"from_arrays: episode {e}, feature {name!r}: non-finite value at frame {frame}"
                    raise EpisodeDataError(msg, episode=e, feature=name)
            self._episodes.append(arrays)
        self.features = specs
        self._ids = np.arange(len(self._episodes), dtype=np.int64)
        self._frames = {n: np.array([len(ep[n]) for ep in self._episodes], dtype=np.int64) for n in names}

    @property
    def episode_ids(self) -> np.ndarray:
        """Episodes are numbered by their position in the list."""
        return self._ids

    def frames(self, feature: str) -> np.ndarray:
        """Frames per episode of ``feature``."""
        return self._frames[feature]

    def read(self, episode: int, feature: str, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Frames of one episode, as float32 (images in [0, 1], channels first)."""
        x = self._episodes[episode][feature][start:stop:step]
        if self.features[feature].kind == "image":
            return image_frames(x)
        return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)

    def describe_source(self) -> str:
        """One line: in-memory arrays."""
        return f"arrays: {len(self._episodes)} episodes"


class HFDatasetSource(EpisodeSource):
    """A Hugging Face ``datasets.Dataset``: one row per frame, an episode index column.

    Rows of one episode must be contiguous (as LeRobot writes them). Image columns
    (``datasets.Image``) become image features; numeric scalar and sequence columns become
    vectors (actions when ``action`` is in the name); strings and the bookkeeping columns
    (:data:`BOOKKEEPING_COLUMNS`) are left out unless named in ``features``.

    Args:
        dataset: the dataset.
        fps: frames per second of the rows.
        episode_column: the column holding each row's episode index.
        features: the columns to use (default: every usable column).
        kinds: feature -> kind, where the guess is wrong.

    Raises:
        EpisodeDataError: naming the column: a missing episode or feature column, episodes whose
            rows are not contiguous, a column that is not numeric or an image.

    """

    def __init__(
        self,
        dataset: Any,
        fps: float,
        episode_column: str = "episode_index",
        features: Sequence[str] | None = None,
        kinds: Mapping[str, FeatureKind] | None = None,
    ) -> None:
        columns = list(getattr(dataset, "column_names", None) or [])
        if not columns or not hasattr(dataset, "features"):
            msg = f"from_hf_dataset: expected a datasets.Dataset, got {type(dataset).__name__}"
            raise EpisodeDataError(msg)
        if not is_finite_number(fps) or fps <= 0:
            msg = f"from_hf_dataset: fps={fps!r} must be a finite rate in Hz > 0"
            raise EpisodeDataError(msg)
        if episode_column not in columns:
            msg = f"from_hf_dataset: no episode column {episode_column!r}; columns: {columns}"
            raise EpisodeDataError(msg, feature=episode_column)
        kinds = dict(kinds or {})
        episode = np.asarray(dataset.with_format("numpy")[episode_column]).astype(np.int64)
        if episode.ndim != 1 or len(episode) == 0:
            msg = f"from_hf_dataset: column {episode_column!r} must hold one integer per row"
            raise EpisodeDataError(msg, feature=episode_column)
        change = np.flatnonzero(np.diff(episode)) + 1
        starts = np.concatenate([[0], change])
        ids = episode[starts]
        if len(np.unique(ids)) != len(ids):
            msg = f"from_hf_dataset: the rows of each episode must be contiguous (column {episode_column!r})"
            raise EpisodeDataError(msg, feature=episode_column)
        self._starts = starts.astype(np.int64)
        self._lengths = np.diff(np.concatenate([starts, [len(episode)]])).astype(np.int64)
        self._ids = ids
        self._dataset = dataset
        chosen = list(features) if features is not None else [c for c in columns if c not in BOOKKEEPING_COLUMNS]
        specs: dict[str, FeatureSpec] = {}
        for name in chosen:
            if name not in columns:
                msg = f"from_hf_dataset: feature {name!r} is not a column; columns: {columns}"
                raise EpisodeDataError(msg, feature=name)
            feature_type = type(dataset.features[name]).__name__
            if feature_type == "Image":
                shape = image_frames(np.asarray(dataset[0][name])[None]).shape[1:]
                specs[name] = FeatureSpec(name, kinds.get(name, "image"), tuple(shape), float(fps))
                continue
            first = dataset.with_format("numpy")[0][name]
            value = np.asarray(first)
            if value.dtype.kind not in "uifb":
                if features is not None:
                    msg = f"from_hf_dataset: column {name!r} ({feature_type}, {value.dtype}) is not numeric or an image"
                    raise EpisodeDataError(msg, feature=name)
                continue  # strings (task text) are not streams
            kind = kinds.get(name, guess_kind(name, 0 if value.ndim <= 1 else value.ndim))
            specs[name] = FeatureSpec(name, kind, (int(value.size),), float(fps))
        if not specs:
            msg = f"from_hf_dataset: no numeric or image column to use; columns: {columns}"
            raise EpisodeDataError(msg)
        self.features = specs

    @property
    def episode_ids(self) -> np.ndarray:
        """The episode column's values, in row order."""
        return self._ids

    def frames(self, feature: str) -> np.ndarray:
        """Rows per episode (every column has one value per row)."""
        return self._lengths

    def read(self, episode: int, feature: str, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Rows of one episode's column, as float32."""
        base = int(self._starts[episode])
        stop = min(stop, int(self._lengths[episode]))
        rows = list(range(base + start, base + stop, step))
        if self.features[feature].kind == "image" and type(self._dataset.features[feature]).__name__ == "Image":
            images = self._dataset.select(rows)[feature]
            x = image_frames(np.stack([np.asarray(im) for im in images]))
        else:
            x = np.asarray(self._dataset.with_format("numpy").select(rows)[feature], dtype=np.float32)
            x = image_frames(x) if self.features[feature].kind == "image" else x.reshape(len(rows), -1)
        return self._check_finite(x, episode, feature)

    def describe_source(self) -> str:
        """One line: a Hugging Face dataset."""
        return f"datasets.Dataset: {len(self._ids)} episodes, {int(self._lengths.sum())} rows"
