"""Built-in datamodules, registered through the ``canvas_engineering`` entry point.

Our own ``pyproject.toml`` declares ``datamodules = "canvas_engineering.plugins.datamodules"``
under ``[project.entry-points.canvas_engineering]``: the same path a third party uses.
A datamodule is registered only when the packages it needs are installed (lightning for all
of them, gymnasium for ``cartpole``, PyAV for ``video_folder``), as the ``cogvideox``
backbone is; the classes are imported when the hook runs, never when this module is.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import importlib
import importlib.util

from canvas_engineering.plugin_host.host import hookimpl

#: registered name -> (``module:Class`` under ``canvas_engineering.datamodules``, extra packages it needs)
BUILTIN_DATAMODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bouncing_balls": ("bouncing_balls:BouncingBallsDataModule", ()),
    "multi_frequency": ("multi_frequency:MultiFrequencyDataModule", ()),
    "cartpole": ("cartpole:CartPoleDataModule", ("gymnasium",)),
    "video_folder": ("video_folder:VideoFolderDataModule", ("av",)),
    "episodes": ("episodes:EpisodeDataModule", ("pyarrow", "av")),
}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@hookimpl
def register_datamodules(registry) -> None:
    """Register the built-in datamodules of :data:`BUILTIN_DATAMODULES` whose packages are installed."""
    if not _installed("lightning"):
        return
    for name, (target, needs) in BUILTIN_DATAMODULES.items():
        if not all(_installed(p) for p in needs):
            continue
        module, cls = target.split(":")
        registry.add(name, getattr(importlib.import_module(f"canvas_engineering.datamodules.{module}"), cls))
