"""``VideoFolderDataModule``: clips from a folder of video files, read with PyAV.

Every video file of the folder (by extension, see :data:`VIDEO_EXTENSIONS`) is decoded once
in ``setup``, converted to grayscale or RGB by FFmpeg, centre-cropped to a square (or
stretched) and resized to ``size x size`` with ``torch.nn.functional.interpolate``
(antialiased bilinear), and kept in memory as uint8. Clips are ``frames`` consecutive frames
every ``clip_stride`` frames; they are split into train/val/test by a permutation seeded by
``seed``, either clip by clip or video by video.

Needs PyAV (``pip install 'canvas-engineering[data]'``), imported when the folder is read.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from canvas_engineering.datamodules.base import CanvasDataModule, Split, TopologyKind
from torch.nn import functional as F
from torch.utils.data import Dataset

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.errors import MissingDependencyError, VideoFolderError
from canvas_engineering.models.region_codecs import RegionFormat

__all__ = ["VIDEO_EXTENSIONS", "VideoClipDataset", "VideoFolderDataModule", "VideoFolderError", "read_video"]

#: file name endings read as videos (case-insensitive)
VIDEO_EXTENSIONS: tuple[str, ...] = (".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ogv", ".webm")


def _av():
    try:
        import av
    except ImportError as err:
        msg = "VideoFolderDataModule needs PyAV: pip install 'canvas-engineering[data]'"
        raise MissingDependencyError(msg) from err
    return av


def _check_readable(path: Path) -> None:
    """Open ``path`` and check it has a video stream (headers only, nothing decoded)."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                msg = f"VideoFolderDataModule: {str(path)!r} has no video stream"
                raise VideoFolderError(msg, path)
    except (av.FFmpegError, OSError) as err:
        msg = f"VideoFolderDataModule: cannot read video file {str(path)!r}: {err}"
        raise VideoFolderError(msg, path) from None


def read_video(
    path: str | Path,
    *,
    size: int,
    channels: Literal[1, 3],
    resize: Literal["crop", "stretch"] = "crop",
    max_frames: int | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    """Decode a video file into a ``(frames, channels, size, size)`` uint8 tensor.

    Raises:
        VideoFolderError: the file cannot be decoded (names the file).

    """
    av = _av()
    fmt = "gray" if channels == 1 else "rgb24"
    out: list[torch.Tensor] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.from_numpy(np.stack(pending))  # (n, h, w) or (n, h, w, 3), uint8
        x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (n, C, h, w)
        h, w = x.shape[-2:]
        if resize == "crop":
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = x[..., top : top + side, left : left + side]  # (n, C, side, side)
        y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8))  # (n, C, size, size)
        pending.clear()

    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                pending.append(frame.to_ndarray(format=fmt))
                if len(pending) >= chunk:
                    flush()
                if max_frames is not None and sum(map(len, out)) + len(pending) >= max_frames:
                    break
    except (av.FFmpegError, OSError) as err:
        msg = f"VideoFolderDataModule: cannot decode video file {str(path)!r}: {err}"
        raise VideoFolderError(msg, path) from None
    flush()
    if not out:
        return torch.zeros((0, channels, size, size), dtype=torch.uint8)
    return torch.cat(out)


class VideoClipDataset(Dataset):
    """Clips of decoded videos: ``{"video": (frames, C, size, size) float32 in [0, 1]}``.

    Args:
        videos: decoded videos, each ``(n_frames, C, size, size)`` uint8.
        index: ``(video number, first frame)`` of each clip.
        frames: frames per clip.

    """

    def __init__(self, videos: list[torch.Tensor], index: list[tuple[int, int]], frames: int) -> None:
        self.videos, self.index, self.frames = videos, index, frames

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v, start = self.index[i]
        clip = self.videos[v][start : start + self.frames]  # (frames, C, size, size) uint8
        return {"video": clip.float() / 255.0}


class VideoFolderDataModule(CanvasDataModule):
    """Clips of the videos in a folder, as one ``video`` region of patches.

    Canvas (defaults): ``T=8``, ``H=W=size/patch_size=4``, all of it the ``video`` region;
    ``t_current=4``; causal-temporal topology (HOLD fill).

    Batch (defaults, ``B = batch_size``)::

        video  (B, 8, 1, 32, 32)  -> region "video" (patches, C=channels=1, p=8)

    Args:
        root: the folder of video files (non-video files are ignored).
        frames: frames per clip (canvas ``T``, >= 1).
        size: frame side after resizing (a multiple of ``patch_size``).
        patch_size: patch side in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        resize: ``"crop"`` (centre square, then resize) or ``"stretch"`` (resize the whole frame).
        clip_stride: frames between the starts of two clips (``None``: ``frames``, no overlap).
        max_frames: frames read per video at most (``None``: all).
        split_by: ``"clip"`` (clips of one video may land in different splits) or ``"video"``.
        val_fraction: share of clips (or videos) for validation, in (0, 1); at least one.
        test_fraction: share for test (and predict), in (0, 1); at least one.
        recursive: also read videos in sub-folders.
        t_current: first future canvas frame (``None``: ``frames // 2``).
        topology: ``"causal_temporal"`` (HOLD) or ``"dense"``.
        batch_size: clips per batch.
        num_workers: DataLoader workers.
        seed: seed of the split and of the training shuffle.
        d_model: canvas token width.

    Raises:
        CanvasValidationError: a bad argument, named with its value.
        VideoFolderError: ``root`` is not a folder, holds no video file, or a video file
            cannot be read (names the folder or the file).

    """

    def __init__(
        self,
        root: str,
        frames: int = 8,
        size: int = 32,
        patch_size: int = 8,
        channels: Literal[1, 3] = 1,
        resize: Literal["crop", "stretch"] = "crop",
        clip_stride: int | None = None,
        max_frames: int | None = None,
        split_by: Literal["clip", "video"] = "clip",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        recursive: bool = False,
        t_current: int | None = None,
        topology: TopologyKind = "causal_temporal",
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        d_model: int = 64,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, d_model=d_model)
        self.check_int("frames", frames, minimum=1)
        self.check_int("patch_size", patch_size, minimum=1)
        self.check_int("size", size, minimum=patch_size)
        if size % patch_size:
            self._fail("size", size, f"must be a multiple of patch_size={patch_size}")
        self.check_choice("channels", channels, (1, 3))
        self.check_choice("resize", resize, ("crop", "stretch"))
        if clip_stride is not None:
            self.check_int("clip_stride", clip_stride, minimum=1)
        if max_frames is not None:
            self.check_int("max_frames", max_frames, minimum=frames)
        self.check_choice("split_by", split_by, ("clip", "video"))
        self.check_float("val_fraction", val_fraction, minimum=0.0, maximum=1.0, open_min=True)
        self.check_float("test_fraction", test_fraction, minimum=0.0, maximum=1.0, open_min=True)
        if val_fraction + test_fraction >= 1:
            self._fail("test_fraction", test_fraction, f"plus val_fraction={val_fraction!r} must be < 1")
        self.check_bool("recursive", recursive)
        if t_current is not None:
            self.check_int("t_current", t_current, minimum=0, maximum=frames)
        self.check_choice("topology", topology, ("causal_temporal", "dense"))
        self.root = Path(root).expanduser()
        self.files = self._find_videos(self.root, recursive)
        for path in self.files:
            _check_readable(path)
        self.frames, self.size, self.patch_size, self.channels = frames, size, patch_size, channels
        self.resize, self.clip_stride, self.max_frames = resize, clip_stride or frames, max_frames
        self.split_by, self.val_fraction, self.test_fraction = split_by, float(val_fraction), float(test_fraction)
        self.t_current = frames // 2 if t_current is None else t_current
        self.topology = topology
        self._splits: dict[str, VideoClipDataset] | None = None
        self._init_canvas()

    @staticmethod
    def _find_videos(root: Path, recursive: bool) -> list[Path]:
        if not root.is_dir():
            msg = f"VideoFolderDataModule.root={str(root)!r} is not an existing folder"
            raise VideoFolderError(msg, root)
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            msg = (
                f"VideoFolderDataModule.root={str(root)!r} contains no video file "
                f"(looked for {', '.join(VIDEO_EXTENSIONS)}{' in sub-folders too' if recursive else ''})"
            )
            raise VideoFolderError(msg, root)
        return files

    def build_schema(self) -> CanvasSchema:
        """One ``video`` region covering the whole ``frames x g x g`` canvas (``g = size / patch_size``)."""
        g = self.size // self.patch_size
        layout = CanvasLayout(
            T=self.frames,
            H=g,
            W=g,
            d_model=self.d_model,
            regions={"video": (0, self.frames, 0, g, 0, g)},
            t_current=self.t_current,
        )
        topology = self.topology_for(self.topology, ["video"])
        return CanvasSchema(layout, topology, metadata={"datamodule": "video_folder"})

    def build_region_formats(self) -> dict[str, RegionFormat]:
        """Patches of ``channels`` x ``patch_size`` x ``patch_size`` pixels."""
        return {"video": RegionFormat("patches", channels=self.channels, patch_size=self.patch_size)}

    def _read_all(self) -> dict[str, VideoClipDataset]:
        videos, clips = [], []  # clips: per video, its (video number, start) list
        short = []
        for path in self.files:
            video = read_video(
                path, size=self.size, channels=self.channels, resize=self.resize, max_frames=self.max_frames
            )
            starts = range(0, len(video) - self.frames + 1, self.clip_stride)
            if len(starts) == 0:
                short.append(f"{path.name} ({len(video)} frames)")
                continue
            clips.append([(len(videos), s) for s in starts])
            videos.append(video)
        if short:
            warnings.warn(
                f"VideoFolderDataModule: skipped {len(short)} video(s) shorter than frames={self.frames}: "
                + ", ".join(short),
                stacklevel=2,
            )
        units = clips if self.split_by == "video" else [[c] for per_video in clips for c in per_video]
        n = len(units)
        n_val = max(1, round(n * self.val_fraction))
        n_test = max(1, round(n * self.test_fraction))
        if n - n_val - n_test < 1:
            what = "videos long enough" if self.split_by == "video" else "clips"
            msg = (
                f"VideoFolderDataModule: folder {str(self.root)!r} gives {n} {what} (frames={self.frames}, "
                f"clip_stride={self.clip_stride}, split_by={self.split_by!r}); train, val and test need at least "
                "one each: add videos, or lower frames or clip_stride"
            )
            raise VideoFolderError(msg, self.root)
        order = np.random.default_rng([self.seed, 7]).permutation(n)
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        return {
            split: VideoClipDataset(videos, [c for u in sorted(idx.tolist()) for c in units[u]], self.frames)
            for split, idx in parts.items()
        }

    def build_dataset(self, split: Split) -> VideoClipDataset:
        """Clips of the split (the folder is decoded once, on first use)."""
        if self._splits is None:
            self._splits = self._read_all()
        return self._splits[split]

    @property
    def num_clips(self) -> dict[str, int]:
        """Clips per split (decodes the folder on first use)."""
        return {split: len(self.build_dataset(split)) for split in ("train", "val", "test")}
