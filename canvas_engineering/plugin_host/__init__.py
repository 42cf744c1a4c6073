"""Plugin host (foundation): the pluggy host object, its registry types and the hook specifications."""

from __future__ import annotations

from canvas_engineering.plugin_host.hookspecs import (
    PROJECT_NAME,
    hookimpl,
    hookspec,
    register_attention_types,
    register_backbones,
    register_datamodules,
)
from canvas_engineering.plugin_host.host import (
    BLOCK_ENV,
    DISABLE_AUTOLOAD_ENV,
    ENTRY_POINT_GROUP,
    STRICT_ENV,
    DuplicateRegistrationError,
    PluginHost,
    PluginLoadWarning,
    UnknownPluginError,
    default_host,
    get_plugin_manager,
    get_registry,
    register_plugin,
    reset_plugins,
    unregister_plugin,
)
from canvas_engineering.plugin_host.registry import (
    IN_PROCESS,
    KindRegistry,
    PluginEntry,
    PluginRegistry,
    Provider,
)

__all__ = [
    "BLOCK_ENV",
    "DISABLE_AUTOLOAD_ENV",
    "DuplicateRegistrationError",
    "ENTRY_POINT_GROUP",
    "IN_PROCESS",
    "KindRegistry",
    "PROJECT_NAME",
    "PluginEntry",
    "PluginHost",
    "PluginLoadWarning",
    "PluginRegistry",
    "Provider",
    "STRICT_ENV",
    "UnknownPluginError",
    "default_host",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "hookspec",
    "register_attention_types",
    "register_backbones",
    "register_datamodules",
    "register_plugin",
    "reset_plugins",
    "unregister_plugin",
]
