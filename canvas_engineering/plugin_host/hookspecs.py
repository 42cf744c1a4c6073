"""Hook specifications of the ``canvas_engineering`` plugin host.

A plugin is any module or object with functions marked ``@canvas_engineering.hookimpl``,
found through the ``canvas_engineering`` entry-point group::

    # pyproject.toml of a third-party distribution
    [project.entry-points.canvas_engineering]
    my_attention = "my_package.plugin"

    # my_package/plugin.py
    from canvas_engineering import hookimpl

    @hookimpl
    def register_attention_types(registry):
        registry.add("my_attention", MyAttention)

Every hook is a *registrar*: it receives a typed registry and calls ``registry.add(name,
obj)``; nothing is returned. An implementation may accept a subset of the arguments.
Hooks are called once, when the plugin registry is first used (lazily, never at import),
in plugin load order; a hook that raises is reported as a ``PluginLoadWarning`` naming its
distribution and entry point, and skipped. ``registry.add`` refuses an object of the wrong
kind (each hook below says what its kind is) with a ``PluginRegistrationError``, so such a
hook is reported and skipped the same way; ``register_plugin`` calls an in-process plugin's
hooks once more, at registration, and raises that error there.

This module is the plugin contract only: it imports nothing from canvas-engineering at
run time (the plugin host imports it, never the other way round).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import pluggy

if TYPE_CHECKING:
    from canvas_engineering.plugin_host.registry import KindRegistry

__all__ = [
    "PROJECT_NAME",
    "hookimpl",
    "hookspec",
    "register_attention_types",
    "register_backbones",
    "register_datamodules",
]

#: pluggy project name: hookimpls and hookspecs of canvas-engineering are marked with it.
PROJECT_NAME: Final = "canvas_engineering"

#: Marker for hook specifications of the ``canvas_engineering`` project.
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: Marker for hook implementations of canvas-engineering plugins: decorate a function named
#: after a hook of this module (e.g. ``register_attention_types``) with ``@hookimpl`` and
#: declare its module in the ``canvas_engineering`` entry-point group.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- execution ---------------------------------------------------------------------


@hookspec
def register_attention_types(registry: KindRegistry) -> None:
    """Register attention function types.

    Called once when the plugin registry is first built. Call
    ``registry.add(name, cls)`` for each type, where ``cls`` subclasses
    :class:`canvas_engineering.AttentionType` and is constructed as
    ``cls(d_model=..., n_heads=..., **config)``.

    :param registry: the attention-type registry; ``add`` refuses a name another plugin
        already provides, naming both sources, and anything but a concrete ``AttentionType``
        subclass (a function, an instance, an abstract class).
    :return: nothing (collect-all hook; return values are ignored).
    """


# -- models ------------------------------------------------------------------------


@hookspec
def register_backbones(registry: KindRegistry) -> None:
    """Register backbones (networks over canvas tokens).

    Called once when the plugin registry is first built. Call ``registry.add(name,
    factory)`` where ``factory(layout, topology, **config)`` returns an ``nn.Module``
    (usually a ``canvas_engineering.CanvasBackbone``).

    :param registry: the backbone registry; ``add`` refuses an object that is not callable,
        an ``nn.Module`` instance, and a class that is not a concrete ``CanvasBackbone``.
    :return: nothing.
    """


# -- data --------------------------------------------------------------------------


@hookspec
def register_datamodules(registry: KindRegistry) -> None:
    """Register LightningDataModules that produce canvas batches.

    Called once when the plugin registry is first built. Call ``registry.add(name, cls)``
    where ``cls`` subclasses ``lightning.LightningDataModule`` and yields dict batches keyed
    by region name.

    :param registry: the datamodule registry; ``add`` refuses anything but a concrete
        ``lightning.pytorch.LightningDataModule`` subclass.
    :return: nothing.
    """
