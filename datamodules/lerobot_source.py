"""Read LeRobot-format dataset folders (v2.0/v2.1 and v3.0) lazily, with pyarrow and PyAV.

Both layouts in use are read:

* **v2.x**: one parquet file per episode (``data/chunk-XXX/episode_XXXXXX.parquet``),
  ``meta/episodes.jsonl`` (index and length of each episode), ``meta/tasks.jsonl``, one mp4
  per episode and camera (``videos/chunk-XXX/<key>/episode_XXXXXX.mp4``);
* **v3.0**: several episodes per parquet and mp4 file, ``meta/episodes/chunk-XXX/file-XXX.parquet``
  holding each episode's files and offsets (``data/chunk_index``, ``data/file_index``,
  ``videos/<key>/chunk_index``, ``videos/<key>/file_index``, ``videos/<key>/from_timestamp``),
  ``meta/stats.json`` and ``meta/tasks.parquet``.

Paths come from ``meta/info.json``'s ``data_path`` and ``video_path`` templates. Image
features are stored as video (decoded with PyAV) or as images inside the parquet table
(PNG/JPEG bytes or a path, decoded with Pillow). Opening a folder checks it before any
training: ``info.json``, every declared feature in the files, each episode's row count and
timestamps (``frame_index / fps`` within ``tolerance_s``), finite values, and that every video
file exists; decoding is per window, with small per-process caches (a few parquet files and
decoded episode segments), so memory does not grow with the number of episodes and every
DataLoader worker or DDP rank reads only what it samples.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from canvas_engineering.datamodules.episode_sources import (
    BOOKKEEPING_COLUMNS,
    EpisodeSource,
    FeatureKind,
    FeatureSpec,
    guess_kind,
    image_frames,
)

from canvas_engineering.errors import EpisodeDataError
from canvas_engineering.validation import is_finite_number

__all__ = ["LeRobotSource", "decode_video_segment", "read_info"]

_NUMERIC = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
_IMAGE = {"video", "image"}


def _strict_json(path: Path, text: str) -> Any:
    def no_constants(token: str) -> None:
        msg = f"{path}: non-finite number {token} (not JSON)"
        raise EpisodeDataError(msg, path=path)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                msg = f"{path}: duplicate key {key!r}"
                raise EpisodeDataError(msg, path=path)
            out[key] = value
        return out

    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except (json.JSONDecodeError, RecursionError) as err:
        msg = f"{path}: malformed JSON ({err})"
        raise EpisodeDataError(msg, path=path) from None


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        msg = f"{path}: missing {what}"
        raise EpisodeDataError(msg, path=path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        msg = f"{path}: cannot read {what} ({err})"
        raise EpisodeDataError(msg, path=path) from None


def read_info(root: str | Path) -> dict[str, Any]:
    """Read and check ``meta/info.json`` of a LeRobot folder.

    Raises:
        EpisodeDataError: the folder or the file is missing, the file is not JSON, or a required key
            (``codebase_version`` v2.0/v2.1/v3.0, ``fps`` > 0, ``features``, ``data_path``) is missing
            or of the wrong type; the message names the file and the key.

    """
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: not a folder (expected a LeRobot dataset root with meta/info.json)"
        raise EpisodeDataError(msg, path=root)
    path = root / "meta" / "info.json"
    info = _strict_json(path, _read_text(path, "meta/info.json (is this a LeRobot dataset folder?)"))
    if not isinstance(info, dict):
        msg = f"{path}: must hold a JSON object"
        raise EpisodeDataError(msg, path=path)
    version = info.get("codebase_version")
    if version not in ("v2.0", "v2.1", "v3.0"):
        msg = f"{path}: codebase_version={version!r} must be one of 'v2.0', 'v2.1', 'v3.0'"
        raise EpisodeDataError(msg, path=path)
    fps = info.get("fps")
    if not is_finite_number(fps) or fps <= 0:
        msg = f"{path}: fps={fps!r} must be a number > 0"
        raise EpisodeDataError(msg, path=path)
    if not isinstance(info.get("features"), dict) or not info["features"]:
        msg = f"{path}: 'features' must be a non-empty object of feature name -> {{dtype, shape}}"
        raise EpisodeDataError(msg, path=path)
    has_video = any(_dtype(f) == "video" for f in info["features"].values())
    for key in ("data_path", "video_path") if has_video else ("data_path",):
        if not isinstance(info.get(key), str) or not info[key]:
            msg = f"{path}: {key!r} must be a path template string"
            raise EpisodeDataError(msg, path=path)
    for name, feature in info["features"].items():
        shape = feature.get("shape") if isinstance(feature, dict) else None
        if not isinstance(feature, dict) or not isinstance(feature.get("dtype"), str) or not isinstance(shape, list):
            msg = f"{path}: feature {name!r} must be an object with a 'dtype' string and a 'shape' list"
            raise EpisodeDataError(msg, path=path, feature=name)
        if not all(isinstance(n, int) and n >= 1 for n in shape):
            msg = f"{path}: feature {name!r} has shape {shape}, which must be positive integers"
            raise EpisodeDataError(msg, path=path, feature=name)
    return info


def _dtype(feature: object) -> str | None:
    return feature.get("dtype") if isinstance(feature, dict) else None


def _image_shape(name: str, feature: dict[str, Any], path: Path) -> tuple[int, int, int]:
    shape = feature["shape"]
    names = feature.get("names") or []
    if len(shape) != 3:
        msg = f"{path}: image feature {name!r} has shape {shape}; expected 3 dimensions"
        raise EpisodeDataError(msg, path=path, feature=name)
    if isinstance(names, list) and len(names) == 3 and str(names[0]).startswith("c"):
        c, h, w = shape
    elif isinstance(names, list) and len(names) == 3 and str(names[2]).startswith("c"):
        h, w, c = shape
    else:  # no names: channels are the small dimension
        c, h, w = shape if shape[0] in (1, 3, 4) else (shape[2], shape[0], shape[1])
    return int(c), int(h), int(w)


@functools.lru_cache(maxsize=8)
def decode_video_segment(path: str, from_timestamp: float, frames: int, fps: float) -> np.ndarray:
    """Decode ``frames`` frames of ``path`` from ``from_timestamp`` seconds: ``(frames, H, W, 3)`` uint8.

    Cached per process (the last few segments), so the windows of one episode decode it once.

    Raises:
        EpisodeDataError: the file cannot be decoded, or holds fewer frames than asked (names the file).

    """
    import av

    out: list[np.ndarray] = []
    half = 0.5 / fps
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if from_timestamp > 0:
                container.seek(int(from_timestamp / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else from_timestamp + len(out) / fps
                if t < from_timestamp - half:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == frames:
                    break
    except (OSError, IndexError, ValueError) as err:  # av.FFmpegError subclasses OSError/ValueError
        msg = f"{path}: cannot decode video ({err})"
        raise EpisodeDataError(msg, path=path) from None
    if len(out) < frames:
        msg = (
            f"{path}: video shorter than its table: {len(out)} frames from {from_timestamp:.3f} s, "
            f"the table has {frames}"
        )
        raise EpisodeDataError(msg, path=path)
    return np.stack(out)


@functools.lru_cache(maxsize=4)
def _table(path: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns of one parquet file as numpy arrays (rows first); cached per process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=list(columns))
    except (OSError, pa.ArrowException) as err:
        msg = f"{path}: cannot read parquet ({err})"
        raise EpisodeDataError(msg, path=path) from None
    out = {}
    for name in columns:
        column = table.column(name).combine_chunks()
        if pa.types.is_struct(column.type):  # an image: {bytes, path}
            out[name] = np.array(column.to_pylist(), dtype=object)
        elif pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(
            column.type
        ):
            flat = column.flatten()
            while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
                flat = flat.flatten()
            values = flat.to_numpy(zero_copy_only=False).astype(np.float32)
            out[name] = values.reshape(len(column), -1) if len(column) else values.reshape(0, 1)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


class LeRobotSource(EpisodeSource):
    """A LeRobot-format dataset folder (v2.0, v2.1 or v3.0).

    Args:
        root: the dataset folder (holding ``meta/info.json``).
        features: the features to use (default: every numeric and image feature of
            ``info.json`` except the bookkeeping columns :data:`BOOKKEEPING_COLUMNS`).
        kinds: feature -> ``"image"``/``"vector"``/``"action"`` where the guess is wrong.
        tolerance_s: how far a row's ``timestamp`` may be from ``frame_index / fps`` (seconds).

    Raises:
        EpisodeDataError: naming the file, episode and feature: see :func:`read_info` and the module
            docstring for what is checked.

    """

    def __init__(
        self,
        root: str | Path,
        features: Sequence[str] | None = None,
        kinds: Mapping[str, FeatureKind] | None = None,
        tolerance_s: float = 1e-4,
    ) -> None:
        self.root = Path(root)
        info = read_info(self.root)
        self.info = info
        self.version: str = info["codebase_version"]
        self.fps = float(info["fps"])
        self.tolerance_s = float(tolerance_s)
        self._info_path = self.root / "meta" / "info.json"
        declared: dict[str, Any] = info["features"]
        kinds = dict(kinds or {})
        if features is None:
            chosen = [
                n for n, f in declared.items() if n not in BOOKKEEPING_COLUMNS and (f["dtype"] in _NUMERIC | _IMAGE)
            ]
        else:
            chosen = list(features)
            for name in chosen:
                if name not in declared:
                    msg = f"{self._info_path}: feature {name!r} is not declared; declared: {sorted(declared)}"
                    raise EpisodeDataError(msg, path=self._info_path, feature=name)
        specs: dict[str, FeatureSpec] = {}
        self.storage: dict[str, str] = {}  # feature -> "video" / "image" / "column"
        for name in chosen:
            feature = declared[name]
            dtype = feature["dtype"]
            if dtype in _IMAGE:
                shape = _image_shape(name, feature, self._info_path)
                specs[name] = FeatureSpec(name, kinds.get(name, "image"), shape, self.fps)
                self.storage[name] = dtype
            elif dtype in _NUMERIC:
                kind = kinds.get(name, guess_kind(name, 0))
                specs[name] = FeatureSpec(name, kind, (int(np.prod(feature["shape"])),), self.fps)
                self.storage[name] = "column"
            else:
                msg = f"{self._info_path}: feature {name!r} has dtype {dtype!r}, which is not numeric, image or video"
                raise EpisodeDataError(msg, path=self._info_path, feature=name)
        if not specs:
            msg = f"{self._info_path}: no numeric, image or video feature to use"
            raise EpisodeDataError(msg, path=self._info_path)
        self.features = specs
        self._episodes = self._read_episodes()
        self._scan()

    # -- metadata -------------------------------------------------------------------------------

    def _read_episodes(self) -> dict[str, np.ndarray]:
        """Per episode: index, length, data file and (v3.0) row/video offsets; arrays in episode order."""
        if self.version == "v3.0":
            return self._read_episodes_v3()
        path = self.root / "meta" / "episodes.jsonl"
        lines = _read_text(path, "meta/episodes.jsonl").splitlines()
        index, length = [], []
        for i, line in enumerate(x for x in lines if x.strip()):
            row = _strict_json(path, line)
            ep, n = (row.get("episode_index"), row.get("length")) if isinstance(row, dict) else (None, None)
            if not (isinstance(ep, int) and ep >= 0 and isinstance(n, int) and n >= 1):
                msg = f"{path}: line {i + 1} needs integer 'episode_index' >= 0 and 'length' >= 1, got {line[:80]!r}"
                raise EpisodeDataError(msg, path=path)
            index.append(ep)
            length.append(n)
        if not index:
            msg = f"{path}: no episodes"
            raise EpisodeDataError(msg, path=path)
        chunks = int(self.info.get("chunks_size", 1000))
        idx = np.array(index, dtype=np.int64)
        data = [
            str(self.root / self.info["data_path"].format(episode_chunk=e // chunks, episode_index=e))
            for e in index
        ]
        out: dict[str, Any] = {"index": idx, "length": np.array(length, dtype=np.int64), "data": np.array(data)}
        for name, storage in self.storage.items():
            if storage == "video":
                out[f"video:{name}"] = np.array([
                    str(self.root / self.info["video_path"].format(
                        episode_chunk=e // chunks, episode_index=e, video_key=name, chunk_index=e // chunks
                    ))
                    for e in index
                ])
                out[f"from:{name}"] = np.zeros(len(index))
        return out

    def _read_episodes_v3(self) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        folder = self.root / "meta" / "episodes"
        files = sorted(folder.glob("chunk-*/file-*.parquet")) if folder.is_dir() else []
        if not files:
            msg = f"{folder}: missing episode metadata (meta/episodes/chunk-XXX/file-XXX.parquet)"
            raise EpisodeDataError(msg, path=folder)
        needed = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for name, storage in self.storage.items():
            if storage == "video":
                needed += [f"videos/{name}/chunk_index", f"videos/{name}/file_index", f"videos/{name}/from_timestamp"]
        columns: dict[str, list[np.ndarray]] = {c: [] for c in needed}
        for file in files:
            names = pq.read_schema(file).names
            missing = [c for c in needed if c not in names]
            if missing:
                msg = f"{file}: episode metadata lacks column(s) {missing}"
                raise EpisodeDataError(msg, path=file)
            table = _table(str(file), tuple(needed))
            for c in needed:
                columns[c].append(table[c])
        cols = {c: np.concatenate(v) for c, v in columns.items()}
        idx = cols["episode_index"].astype(np.int64)
        template = self.info["data_path"]
        data = np.array([
            str(self.root / template.format(chunk_index=int(c), file_index=int(f)))
            for c, f in zip(cols["data/chunk_index"], cols["data/file_index"], strict=True)
        ])
        out: dict[str, Any] = {"index": idx, "length": cols["length"].astype(np.int64), "data": data}
        video = self.info.get("video_path") or ""
        for name, storage in self.storage.items():
            if storage == "video":
                out[f"video:{name}"] = np.array([
                    str(self.root / video.format(video_key=name, chunk_index=int(c), file_index=int(f)))
                    for c, f in zip(cols[f"videos/{name}/chunk_index"], cols[f"videos/{name}/file_index"], strict=True)
                ])
                out[f"from:{name}"] = cols[f"videos/{name}/from_timestamp"].astype(np.float64)
        if (out["length"] < 1).any():
            msg = f"{folder}: episode {int(idx[np.argmax(out['length'] < 1)])} has length < 1"
            raise EpisodeDataError(msg, path=folder)
        return out

    def _scan(self) -> None:
        """Check every data file once: columns, rows per episode, timestamps, finite values; find row ranges."""
        import pyarrow.parquet as pq

        columns = [n for n, s in self.storage.items() if s == "column"]
        starts = np.zeros(len(self._episodes["index"]), dtype=np.int64)
        order = np.argsort(self._episodes["data"], kind="stable")
        files = self._episodes["data"][order]
        bounds = np.flatnonzero(np.r_[True, files[1:] != files[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            path = str(files[a])
            if not Path(path).is_file():
                ep = int(self._episodes["index"][order[a]])
                msg = f"{path}: missing data file of episode {ep}"
                raise EpisodeDataError(msg, path=path, episode=ep)
            names = pq.read_schema(path).names
            wanted = [n for n, s in self.storage.items() if s != "video"]
            wanted += ["episode_index", "frame_index", "timestamp"]
            missing = [n for n in wanted if n not in names]
            if missing:
                msg = f"{path}: column(s) {missing} declared in meta/info.json are not in the file"
                raise EpisodeDataError(msg, path=path, feature=missing[0])
            table = _table(path, tuple(["episode_index", "frame_index", "timestamp", *columns]))
            episode_col = table["episode_index"].astype(np.int64)
            for position in order[a:b]:
                ep = int(self._episodes["index"][position])
                rows = np.flatnonzero(episode_col == ep)
                n = int(self._episodes["length"][position])
                if len(rows) != n or (n and rows[-1] - rows[0] + 1 != n):
                    msg = f"{path}: episode {ep} has {len(rows)} contiguous rows, its metadata says length {n}"
                    raise EpisodeDataError(msg, path=path, episode=ep)
                starts[position] = rows[0]
                frame = table["frame_index"][rows].astype(np.float64)
                stamp = table["timestamp"][rows].astype(np.float64)
                off = np.abs(stamp - frame / self.fps)
                if (off > self.tolerance_s).any():
                    k = int(np.argmax(off > self.tolerance_s))
                    msg = (
                        f"{path}: episode {ep}, frame {int(frame[k])}: timestamp {stamp[k]:.6f} s is "
                        f"{off[k]:.6f} s from frame_index / fps = {frame[k] / self.fps:.6f} s "
                        f"(tolerance {self.tolerance_s} s)"
                    )
                    raise EpisodeDataError(msg, path=path, episode=ep, feature="timestamp")
                for name in columns:
                    values = np.asarray(table[name][rows], dtype=np.float64)
                    if not np.isfinite(values).all():
                        k = int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)).all(1))[0, 0])
                        msg = f"{path}: episode {ep}, feature {name!r}: non-finite value at frame {k}"
                        raise EpisodeDataError(msg, path=path, episode=ep, feature=name)
        self._episodes["row"] = starts
        for name, storage in self.storage.items():
            if storage == "video":
                self._check_videos(name)

    def _check_videos(self, name: str) -> None:
        """Every video file exists and holds the frames its episodes' tables need (headers only)."""
        import av

        paths = self._episodes[f"video:{name}"]
        end = np.round(self._episodes[f"from:{name}"] * self.fps).astype(np.int64) + self._episodes["length"]
        for path in np.unique(paths):
            in_file = np.flatnonzero(paths == path)
            last = in_file[np.argmax(end[in_file])]
            ep = int(self._episodes["index"][last])
            if not Path(path).is_file():
                msg = f"{path}: missing video of feature {name!r} (episode {ep})"
                raise EpisodeDataError(msg, path=path, episode=ep, feature=name)
            try:
                with av.open(str(path)) as container:
                    stream = container.streams.video[0]
                    have = int(stream.frames)
                    if have == 0 and stream.duration is not None:  # no frame count in the header
                        have = int(round(float(stream.duration * stream.time_base) * self.fps))
            except (OSError, IndexError, ValueError) as err:
                msg = f"{path}: cannot open video of feature {name!r} ({err})"
                raise EpisodeDataError(msg, path=path, episode=ep, feature=name) from None
            if have and have < int(end[last]):
                msg = (
                    f"{path}: video shorter than its table: {have} frames, episode {ep} of feature {name!r} "
                    f"needs {int(end[last])}"
                )
                raise EpisodeDataError(msg, path=path, episode=ep, feature=name)

    # -- EpisodeSource --------------------------------------------------------------------------

    @property
    def episode_ids(self) -> np.ndarray:
        """Episode indices from the metadata."""
        return self._episodes["index"]

    def frames(self, feature: str) -> np.ndarray:
        """Every feature has one frame per row: the episode lengths."""
        return self._episodes["length"]

    def where(self, episode: int, feature: str) -> str:
        """Name the file holding an episode's feature."""
        key = f"video:{feature}"
        path = self._episodes[key][episode] if key in self._episodes else self._episodes["data"][episode]
        return f"{path}: episode {int(self._episodes['index'][episode])}, feature {feature!r}"

    def read(self, episode: int, feature: str, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Rows ``start:stop:step`` of one episode's feature, float32 (images ``(n, C, H, W)`` in [0, 1])."""
        n = int(self._episodes["length"][episode])
        stop = min(stop, n)
        storage = self.storage[feature]
        if storage == "video":
            path = str(self._episodes[f"video:{feature}"][episode])
            # decode only the window's frames: seek to its first frame (the episode's offset in the file + start)
            from_ts = float(self._episodes[f"from:{feature}"][episode]) + start / self.fps
            try:
                frames = decode_video_segment(path, from_ts, max(stop - start, 0), self.fps)
            except EpisodeDataError as err:
                ep = int(self._episodes["index"][episode])
                msg = f"{err} (episode {ep}, feature {feature!r})"
                raise EpisodeDataError(msg, path=path, episode=ep, feature=feature) from None
            x = image_frames(frames[::step])
            spec = self.features[feature].shape
            if x.shape[1:] != spec:
                msg = f"{self.where(episode, feature)}: decoded frames are {x.shape[1:]}, info.json says {spec}"
                raise EpisodeDataError(msg, path=path, episode=int(self._episodes["index"][episode]), feature=feature)
            return x
        path = str(self._episodes["data"][episode])
        row = int(self._episodes["row"][episode])
        values = _table(path, (feature,))[feature][row + start : row + stop : step]
        if storage == "image":
            return image_frames(np.stack([self._decode_image(v, path) for v in values]))
        return self._check_finite(np.asarray(values, dtype=np.float32).reshape(len(values), -1), episode, feature)

    def _decode_image(self, value: Any, path: str) -> np.ndarray:
        from PIL import Image

        try:
            if isinstance(value, dict) and value.get("bytes"):
                return np.asarray(Image.open(io.BytesIO(value["bytes"])).convert("RGB"))
            if isinstance(value, dict) and value.get("path"):
                return np.asarray(Image.open(self.root / value["path"]).convert("RGB"))
        except OSError as err:
            msg = f"{path}: cannot decode an image ({err})"
            raise EpisodeDataError(msg, path=path) from None
        msg = f"{path}: an image cell holds neither bytes nor a path"
        raise EpisodeDataError(msg, path=path)

    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """``meta/stats.json``'s mean and std of the features used, or None when absent or incomplete."""
        path = self.root / "meta" / "stats.json"
        if not path.is_file():
            return None
        data = _strict_json(path, _read_text(path, "meta/stats.json"))
        out = {}
        for name, spec in self.features.items():
            entry = data.get(name) if isinstance(data, dict) else None
            if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
                return None
            try:
                mean = np.asarray(entry["mean"], dtype=np.float64).reshape(-1)
                std = np.asarray(entry["std"], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                msg = f"{path}: feature {name!r}: mean/std must be numbers or nested lists of numbers"
                raise EpisodeDataError(msg, path=path, feature=name) from None
            size = spec.shape[0]
            if mean.size != size or std.size != size or not (np.isfinite(mean).all() and np.isfinite(std).all()):
                msg = f"{path}: feature {name!r}: mean/std must be {size} finite numbers (one per channel or element)"
                raise EpisodeDataError(msg, path=path, feature=name)
            out[name] = {"mean": mean, "std": std}
        return out

    def cache_path(self) -> str | None:
        """Cache computed statistics in ``meta/canvas_engineering_stats.json``."""
        return str(self.root / "meta" / "canvas_engineering_stats.json")

    def describe_source(self) -> str:
        """One line: the folder, its version, episodes and rate."""
        return (
            f"LeRobot {self.version} folder {str(self.root)!r}: {len(self.episode_ids)} episodes, "
            f"{int(self._episodes['length'].sum())} frames at {self.fps:g} fps"
        )
