"""LightningDataModules that yield canvas batches (installed as ``canvas_engineering.datamodules``).

Every datamodule subclasses :class:`CanvasDataModule`: typed ``__init__`` arguments, a
``schema`` and ``region_formats`` to build a matching ``CanvasModule`` from, ``describe()``,
and dict batches of float32 tensors keyed by region name. Training batches come from a
:class:`ResumableDataLoader` (order fixed by ``seed`` and the epoch, position saved in Lightning
checkpoints), so a fit resumes exactly even in the middle of an epoch. The built-ins are registered as
plugins (``canvas-engineering plugins``) by :mod:`canvas_engineering.plugins.datamodules`.

Importing this package needs lightning (the ``train`` extra); gymnasium and PyAV (the
``data`` extra) are imported only when CartPole or video data is built.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from canvas_engineering.datamodules.base import (
    CanvasDataModule,
    ResumableDataLoader,
    ResumableSampler,
    TensorDictDataset,
)
from canvas_engineering.datamodules.bouncing_balls import BouncingBallsDataModule
from canvas_engineering.datamodules.cartpole import CartPoleDataModule
from canvas_engineering.datamodules.episode_sources import ArraySource, EpisodeSource, FeatureSpec, HFDatasetSource
from canvas_engineering.datamodules.episodes import EpisodeDataModule
from canvas_engineering.datamodules.lerobot_source import LeRobotSource
from canvas_engineering.datamodules.lerobot_writer import write_lerobot_dataset
from canvas_engineering.datamodules.multi_frequency import MultiFrequencyDataModule
from canvas_engineering.datamodules.video_folder import VideoFolderDataModule, VideoFolderError

__all__ = (
    "BouncingBallsDataModule",
    "CanvasDataModule",
    "ArraySource",
    "CartPoleDataModule",
    "EpisodeDataModule",
    "EpisodeSource",
    "FeatureSpec",
    "HFDatasetSource",
    "LeRobotSource",
    "MultiFrequencyDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "TensorDictDataset",
    "VideoFolderDataModule",
    "VideoFolderError",
    "write_lerobot_dataset",
)
