"""Write episodes as a LeRobot-format dataset folder (v2.1 or v3.0), with pyarrow and PyAV.

For recording rollouts (``examples/episodes_to_canvas.py`` records CartPole), exporting arrays,
and the tests, which build their datasets on disk. Every feature is sampled at the dataset's
``fps`` (the LeRobot format has one rate); images ``(frames, H, W, 3)`` uint8 go to mp4 (or,
with ``image_storage="image"``, PNG bytes inside the parquet table); everything else is a
numeric column. The metadata written is what :class:`LeRobotSource` (and LeRobot) read:
``meta/info.json``, episodes (``episodes.jsonl`` or ``meta/episodes/`` parquet), tasks, and
``meta/stats.json`` (mean, std, min, max per feature; image statistics per channel in [0, 1]).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from canvas_engineering.errors import EpisodeDataError

__all__ = ["write_lerobot_dataset"]


def _is_image(x: np.ndarray) -> bool:
    return x.ndim == 4 and x.dtype == np.uint8


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for codec in ("mpeg4", "libx264"):
        try:
            with av.open(str(path), "w") as out:
                stream = out.add_stream(codec, rate=int(round(fps)))
                stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
                stream.pix_fmt = "yuv420p"
                if codec == "mpeg4":
                    stream.options = {"qscale": "2"}  # near-lossless: tests compare decoded pixels
                for img in frames:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            return
        except (OSError, ValueError) as err:  # pragma: no cover - depends on the FFmpeg build
            last = err
    msg = f"{path}: cannot encode video ({last})"
    raise EpisodeDataError(msg, path=path)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _stats(values: np.ndarray, image: bool) -> dict[str, list[Any]]:
    if image:  # per channel, in [0, 1], shaped (C, 1, 1) as LeRobot stores them
        x = values.astype(np.float64).transpose(3, 0, 1, 2).reshape(values.shape[-1], -1) / 255.0
        return {k: getattr(np, k)(x, axis=1)[:, None, None].tolist() for k in ("mean", "std", "min", "max")}
    x = values.astype(np.float64).reshape(len(values), -1)
    return {k: getattr(np, k)(x, axis=0).tolist() for k in ("mean", "std", "min", "max")}


def write_lerobot_dataset(
    root: str | Path,
    episodes: Sequence[Mapping[str, np.ndarray]],
    fps: float,
    *,
    version: Literal["v2.1", "v3.0"] = "v3.0",
    tasks: Sequence[str] | None = None,
    image_storage: Literal["video", "image"] = "video",
    episodes_per_file: int = 1000,
    write_stats: bool = True,
    robot_type: str | None = None,
) -> Path:
    """Write ``episodes`` (feature -> array ``(frames, ...)``, all at ``fps``) as a LeRobot folder.

    Args:
        root: the folder to create (must not hold a ``meta/info.json`` yet).
        episodes: the episodes; images are ``(frames, H, W, 3)`` uint8, other features numeric.
        fps: frames per second of every feature.
        version: ``"v3.0"`` (several episodes per file) or ``"v2.1"`` (a file per episode).
        tasks: one task description per episode (default ``"task"`` for all).
        image_storage: images as mp4 (``"video"``) or PNG bytes in the table (``"image"``).
        episodes_per_file: v3.0 only: episodes per parquet and mp4 file.
        write_stats: write ``meta/stats.json``.
        robot_type: stored in ``info.json``.

    Returns:
        ``root``.

    Raises:
        EpisodeDataError: the folder already holds a dataset, or episodes disagree on features.

    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    if (root / "meta" / "info.json").exists():
        msg = f"{root}: already holds a dataset (meta/info.json); write to a new folder"
        raise EpisodeDataError(msg, path=root)
    if not episodes:
        msg = "write_lerobot_dataset: no episodes"
        raise EpisodeDataError(msg)
    names = list(episodes[0])
    tasks = list(tasks) if tasks is not None else ["task"] * len(episodes)
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
    arrays = [{n: np.asarray(ep[n]) for n in names} for ep in episodes]
    for e, ep in enumerate(arrays):
        lengths = {len(x) for x in ep.values()}
        if set(ep) != set(names) or len(lengths) != 1:
            msg = f"write_lerobot_dataset: episode {e} must have features {names}, all with the same number of frames"
            raise EpisodeDataError(msg, episode=e)
    images = [n for n in names if _is_image(arrays[0][n])]
    features: dict[str, Any] = {}
    for n in names:
        x = arrays[0][n]
        if n in images:
            h, w, c = x.shape[1:]
            features[n] = {"dtype": "video" if image_storage == "video" else "image", "shape": [h, w, c],
                           "names": ["height", "width", "channels"]}
            if image_storage == "video":
                features[n]["info"] = {"video.fps": float(fps), "video.height": h, "video.width": w,
                                       "video.channels": c, "video.codec": "mpeg4", "video.pix_fmt": "yuv420p"}
        else:
            shape = [int(np.prod(x.shape[1:]))] if x.ndim > 1 else [1]
            features[n] = {"dtype": str(x.dtype) if x.dtype != np.float64 else "float64", "shape": shape,
                           "names": None}
    for n, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                     ("index", "int64"), ("task_index", "int64")):
        features[n] = {"dtype": dtype, "shape": [1], "names": None}

    def table(rows: list[tuple[int, dict[str, np.ndarray]]], first_index: int) -> pa.Table:
        cols: dict[str, Any] = {}
        for n in names:
            if n in images:
                if image_storage == "image":
                    cols[n] = [{"bytes": _png(img), "path": None} for _, ep in rows for img in ep[n]]
                continue
            x = np.concatenate([ep[n].reshape(len(ep[n]), -1) for _, ep in rows])
            cols[n] = x[:, 0] if features[n]["shape"] == [1] else list(x)
        length = [len(next(iter(ep.values()))) for _, ep in rows]
        cols["timestamp"] = np.concatenate([np.arange(k, dtype=np.float32) / np.float32(fps) for k in length])
        cols["frame_index"] = np.concatenate([np.arange(k, dtype=np.int64) for k in length])
        pairs = [(e, k) for (e, _), k in zip(rows, length, strict=True)]
        cols["episode_index"] = np.concatenate([np.full(k, e, dtype=np.int64) for e, k in pairs])
        cols["index"] = np.arange(first_index, first_index + sum(length), dtype=np.int64)
        cols["task_index"] = np.concatenate([np.full(k, task_ids[tasks[e]], dtype=np.int64)
                                             for (e, _), k in zip(rows, length, strict=True)])
        return pa.table(cols)

    (root / "meta").mkdir(parents=True, exist_ok=True)
    lengths = [len(next(iter(ep.values()))) for ep in arrays]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    chunk = 1000
    if version == "v2.1":
        data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        video_path = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        for e, ep in enumerate(arrays):
            path = root / data_path.format(episode_chunk=e // chunk, episode_index=e)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table([(e, ep)], int(offsets[e])), path)
            if image_storage == "video":
                for n in images:
                    _write_video(root / video_path.format(episode_chunk=e // chunk, video_key=n, episode_index=e),
                                 ep[n], fps)
        with open(root / "meta" / "episodes.jsonl", "w", encoding="utf-8") as f:
            for e, k in enumerate(lengths):
                f.write(json.dumps({"episode_index": e, "tasks": [tasks[e]], "length": k}) + "\n")
        with open(root / "meta" / "tasks.jsonl", "w", encoding="utf-8") as f:
            for t, i in task_ids.items():
                f.write(json.dumps({"task_index": i, "task": t}) + "\n")
    else:
        data_path = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        video_path = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        meta: dict[str, list[Any]] = {"episode_index": [], "tasks": [], "length": [], "data/chunk_index": [],
                                      "data/file_index": [], "dataset_from_index": [], "dataset_to_index": []}
        for n in images if image_storage == "video" else []:
            for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
                meta[f"videos/{n}/{k}"] = []
        for f_i, first in enumerate(range(0, len(arrays), episodes_per_file)):
            group = list(range(first, min(first + episodes_per_file, len(arrays))))
            c_i, file_i = f_i // chunk, f_i % chunk
            path = root / data_path.format(chunk_index=c_i, file_index=file_i)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table([(e, arrays[e]) for e in group], int(offsets[first])), path)
            start_s = 0.0
            for e in group:
                meta["episode_index"].append(e)
                meta["tasks"].append([tasks[e]])
                meta["length"].append(lengths[e])
                meta["data/chunk_index"].append(c_i)
                meta["data/file_index"].append(file_i)
                meta["dataset_from_index"].append(int(offsets[e]))
                meta["dataset_to_index"].append(int(offsets[e + 1]))
                for n in images if image_storage == "video" else []:
                    meta[f"videos/{n}/chunk_index"].append(c_i)
                    meta[f"videos/{n}/file_index"].append(file_i)
                    meta[f"videos/{n}/from_timestamp"].append(start_s)
                    meta[f"videos/{n}/to_timestamp"].append(start_s + lengths[e] / fps)
                start_s += lengths[e] / fps
            if image_storage == "video":
                for n in images:
                    frames = np.concatenate([arrays[e][n] for e in group])
                    _write_video(root / video_path.format(video_key=n, chunk_index=c_i, file_index=file_i), frames, fps)
        (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
        pq.write_table(pa.table({"task_index": list(task_ids.values()), "task": list(task_ids)}),
                       root / "meta" / "tasks.parquet")
    info = {
        "codebase_version": version, "robot_type": robot_type, "total_episodes": len(arrays),
        "total_frames": int(offsets[-1]), "total_tasks": len(task_ids), "chunks_size": chunk, "fps": fps,
        "splits": {"train": f"0:{len(arrays)}"}, "data_path": data_path,
        "video_path": video_path if images and image_storage == "video" else None, "features": features,
    }
    if write_stats:
        stats = {n: _stats(np.concatenate([ep[n] for ep in arrays]), n in images) for n in names}
        (root / "meta" / "stats.json").write_text(json.dumps(stats, allow_nan=False), encoding="utf-8")
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return root
