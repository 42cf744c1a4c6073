"""Built-in backbones, registered through the ``canvas_engineering`` entry point.

Our own ``pyproject.toml`` declares ``backbones = "canvas_engineering.plugins.backbones"``
under ``[project.entry-points.canvas_engineering]``: the same path a third party uses.
Each backbone is a factory ``factory(layout, topology, **config) -> nn.Module`` living in
its own submodule; adding one is one entry in :data:`BUILTIN_BACKBONES`.
"""

from __future__ import annotations

from collections.abc import Callable

from canvas_engineering.plugins.backbones.canvas_dit import build_canvas_dit
from canvas_engineering.plugins.backbones.cogvideox import register_cogvideox
from torch import nn

from canvas_engineering.plugin_host.host import hookimpl

#: backbone name -> factory(layout, topology, **config)
BUILTIN_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "canvas_dit": build_canvas_dit,
}


@hookimpl
def register_backbones(registry) -> None:
    """Register the built-in backbones of :data:`BUILTIN_BACKBONES`."""
    for name, factory in BUILTIN_BACKBONES.items():
        registry.add(name, factory)
    register_cogvideox(registry)  # "cogvideox", only when diffusers is installed
