"""The plugin host: entry-point discovery, guarded loading and registries with provenance.

A plugin is a module (or any object) with functions marked ``@canvas_engineering.hookimpl``
implementing the registrar hooks of :mod:`canvas_engineering.hookspecs`. A distribution
declares it in the ``canvas_engineering`` entry-point group::

    # pyproject.toml
    [project.entry-points.canvas_engineering]
    my_attention = "my_package.plugin"

    # my_package/plugin.py
    from canvas_engineering import hookimpl

    @hookimpl
    def register_attention_types(registry):
        registry.add("my_attention", MyAttention)

canvas-engineering's own built-ins are declared the same way in its ``pyproject.toml``;
there is no private fast path.

Loading is lazy: nothing happens when the package is imported. The first call to
:func:`get_registry` (or :func:`get_plugin_manager`) loads every entry point, each inside
its own ``try``; a plugin that fails to import, fails validation or whose hook raises is
reported as a :class:`PluginLoadWarning` naming its distribution, version and entry point,
and the others still load. Every registered name records the distribution, version and
entry point that provided it; a name provided twice is refused with a
:class:`DuplicateRegistrationError` naming both providers.

Environment variables:

* ``CANVAS_ENGINEERING_STRICT_PLUGINS=1``: re-raise plugin failures instead of warning.
* ``CANVAS_ENGINEERING_BLOCK_PLUGINS=a,b``: skip entry points whose name or distribution
  is listed.
* ``CANVAS_ENGINEERING_DISABLE_PLUGIN_AUTOLOAD=1``: load only canvas-engineering's own
  entry points (the built-ins); third-party plugins can still be added in-process with
  :func:`register_plugin`.

``canvas-engineering plugins [--json]`` lists what is registered.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import pluggy

from canvas_engineering import hookspecs
from canvas_engineering.attention_types import set_installed_types_provider

__all__ = [
    "BLOCK_ENV",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "DuplicateRegistrationError",
    "KindRegistry",
    "PluginEntry",
    "PluginLoadWarning",
    "PluginRegistry",
    "UnknownPluginError",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "register_plugin",
    "reset_plugins",
    "unregister_plugin",
]

#: pluggy project name and entry-point group of canvas-engineering plugins.
ENTRY_POINT_GROUP: Final = "canvas_engineering"
#: Set to ``1`` to re-raise plugin load and hook failures instead of warning.
STRICT_ENV: Final = "CANVAS_ENGINEERING_STRICT_PLUGINS"
#: Comma-separated entry-point or distribution names to skip.
BLOCK_ENV: Final = "CANVAS_ENGINEERING_BLOCK_PLUGINS"
#: Set to ``1`` to load only canvas-engineering's own (built-in) entry points.
DISABLE_AUTOLOAD_ENV: Final = "CANVAS_ENGINEERING_DISABLE_PLUGIN_AUTOLOAD"

_OWN_DISTRIBUTION: Final = "canvas-engineering"
_IN_PROCESS: Final = "(in-process)"

#: Marker for hook implementations of canvas-engineering plugins: decorate a function named
#: after a hook of :mod:`canvas_engineering.hookspecs` (e.g. ``register_attention_types``)
#: with ``@hookimpl`` and declare its module in the ``canvas_engineering`` entry-point group.
hookimpl = pluggy.HookimplMarker(ENTRY_POINT_GROUP)


# -- errors ------------------------------------------------------------------------


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded or one of its hooks failed; it was skipped."""


class DuplicateRegistrationError(ValueError):
    """A name is provided twice for the same kind (attention type, backbone, datamodule).

    Attributes:
        kind: e.g. ``"attention type"``.
        name: the contested name.
        providers: ``(new, existing)`` as ``"distribution version (entry point / module)"``.
    """

    def __init__(self, kind: str, name: str, new: str, existing: str) -> None:
        self.kind = kind
        self.name = name
        self.providers = (new, existing)
        msg = (
            f"{kind} {name!r}: provided by {new} and {existing}; names must be unique. "
            f"Uninstall one of them or block it with {BLOCK_ENV}=<entry point or distribution>"
        )
        super().__init__(msg)


class UnknownPluginError(KeyError):
    """A name is not registered for its kind; the message lists the available names.

    Attributes:
        kind: e.g. ``"backbone"``.
        name: the requested name.
        available: the registered names, sorted.
    """

    def __init__(self, kind: str, name: object, available: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        listed = ", ".join(self.available) or "(none)"
        msg = (
            f"unknown {kind} {name!r}; available: {listed}. "
            "Install a plugin that provides it (see `canvas-engineering plugins`)"
        )
        super().__init__(msg)

    def __str__(self) -> str:
        # KeyError would repr-quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


# -- registries ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Provider:
    """Who is registering: a distribution's entry point, or an in-process plugin."""

    distribution: str
    version: str
    #: entry-point value (module) or in-process plugin name
    source: str
    #: entry-point name, "" for in-process plugins
    entry_point: str = ""

    def __str__(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.version else self.distribution
        return f"{dist} ({self.source})"


_DIRECT = _Provider(_IN_PROCESS, "", "direct registry.add")


@dataclass(frozen=True)
class PluginEntry:
    """One registered name and where it came from."""

    #: the registered name, e.g. ``"talking_heads"``
    name: str
    #: ``"attention type"``, ``"backbone"`` or ``"datamodule"``
    kind: str
    #: the registered object (class or factory)
    obj: Any
    #: providing distribution, ``"(in-process)"`` for :func:`register_plugin` plugins
    distribution: str
    #: distribution version, ``""`` when unknown
    version: str
    #: entry-point value (the plugin module) or the in-process plugin name
    source: str

    @property
    def provider(self) -> str:
        """``"distribution version (source)"``."""
        return str(_Provider(self.distribution, self.version, self.source))


class KindRegistry:
    """The registered objects of one kind; passed to the registrar hooks.

    Args:
        kind: human-readable kind used in messages, e.g. ``"attention type"``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, PluginEntry] = {}
        self._provider: _Provider = _DIRECT

    def add(self, name: str, obj: Any) -> None:  # noqa: ANN401
        """Register ``obj`` under ``name``, recording the plugin that is registering.

        Raises:
            ValueError: ``name`` is not a non-empty string.
            DuplicateRegistrationError: ``name`` is already registered (names both providers).
        """
        if not isinstance(name, str) or not name:
            msg = f"{self.kind} name must be a non-empty string, got {name!r} from {self._provider}"
            raise ValueError(msg)
        p = self._provider
        if name in self._entries:
            raise DuplicateRegistrationError(self.kind, name, str(p), self._entries[name].provider)
        self._entries[name] = PluginEntry(name, self.kind, obj, p.distribution, p.version, p.source)

    def __getitem__(self, name: str) -> PluginEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownPluginError(self.kind, name, list(self._entries)) from None

    def get(self, name: str, default: PluginEntry | None = None) -> PluginEntry | None:
        """The entry of ``name``, or ``default``."""
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[PluginEntry]:
        """Registered entries, in registration order."""
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"KindRegistry({self.kind!r}, names={self.names()})"


class PluginRegistry:
    """Everything the plugins registered, by kind (see :func:`get_registry`)."""

    #: hook name -> attribute holding its :class:`KindRegistry`
    HOOKS: Final = {
        "register_attention_types": "attention_types",
        "register_backbones": "backbones",
        "register_datamodules": "datamodules",
    }

    def __init__(self) -> None:
        self.attention_types = KindRegistry("attention type")
        self.backbones = KindRegistry("backbone")
        self.datamodules = KindRegistry("datamodule")

    def kinds(self) -> list[KindRegistry]:
        """The kind registries, in hook order."""
        return [getattr(self, attr) for attr in self.HOOKS.values()]

    def entries(self) -> list[PluginEntry]:
        """Every registered entry of every kind."""
        return [e for kind in self.kinds() for e in kind.entries()]


# -- loading -------------------------------------------------------------------------

_lock = threading.RLock()
#: the cached plugin manager; None until first use (nothing is loaded at import)
_plugin_manager: pluggy.PluginManager | None = None
#: the cached registry; None until first use
_registry: PluginRegistry | None = None
#: the registry being built (re-entrant calls see what is registered so far)
_building: PluginRegistry | None = None
#: entry point being loaded, while the plugin manager is built
_loading: str | None = None
#: pluggy plugin name -> who provides it
_providers: dict[str, _Provider] = {}
#: plugins registered with register_plugin, re-registered after reset_plugins
_in_process: dict[str, object] = {}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blocked() -> set[str]:
    return {_normalise(n.strip()) for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def _entry_point_provider(ep: importlib.metadata.EntryPoint) -> _Provider:
    dist = getattr(ep, "dist", None)
    name = (getattr(dist, "name", None) or dist.metadata["Name"]) if dist is not None else None
    version = getattr(dist, "version", None) if dist is not None else None
    return _Provider(name or "(unknown distribution)", version or "", ep.value, ep.name)


def _describe(p: _Provider) -> str:
    dist = f"{p.distribution} {p.version}" if p.version else p.distribution
    where = f"entry point {p.entry_point} = {p.source}" if p.entry_point else f"plugin {p.source!r}"
    return f"{dist} ({where})"


def _outside_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first frame outside this module."""
    frame, level = sys._getframe(2), 2  # the caller of the function that warns
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _fail(exc: BaseException, message: str) -> None:
    """Warn with ``message``, or re-raise ``exc`` in strict mode."""
    if _env_flag(STRICT_ENV):
        if hasattr(exc, "add_note"):
            exc.add_note(message)
        raise exc
    warnings.warn(PluginLoadWarning(message), stacklevel=_outside_stacklevel())


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hookimpls of ``plugin`` that match no hookspec (typos), sorted."""
    bad = set()
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec() and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()):
            bad.add(caller.name)
    return sorted(bad)


def _register(pm: pluggy.PluginManager, plugin: object, name: str, provider: _Provider) -> None:
    """Register one plugin; raises ValueError / PluginValidationError."""
    pm.register(plugin, name=name)
    _providers[name] = provider
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        known = ", ".join(sorted(PluginRegistry.HOOKS))
        msg = f"{_describe(provider)} implements unknown hook(s) {', '.join(unknown)}; known hooks: {known}"
        if _env_flag(STRICT_ENV) or provider.distribution == _IN_PROCESS:
            pm.unregister(plugin)
            del _providers[name]
            raise pluggy.PluginValidationError(plugin, msg)
        warnings.warn(PluginLoadWarning(msg + " (those hooks are ignored)"), stacklevel=_outside_stacklevel())


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    global _loading
    blocked = _blocked()
    builtins_only = _env_flag(DISABLE_AUTOLOAD_ENV)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        provider = _entry_point_provider(ep)
        dist = _normalise(provider.distribution)
        if _normalise(ep.name) in blocked or dist in blocked:
            continue
        if builtins_only and dist != _OWN_DISTRIBUTION:
            continue
        _loading = f"{ep.name} = {ep.value}"
        try:
            plugin = ep.load()
            name = ep.name if pm.get_plugin(ep.name) is None else f"{provider.distribution}:{ep.name}"
            _register(pm, plugin, name, provider)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not brick the tool
            _fail(
                exc,
                f"could not load canvas_engineering plugin from {_describe(provider)}: "
                f"{type(exc).__name__}: {exc}. It was skipped; uninstall it, block it with "
                f"{BLOCK_ENV}={ep.name}, or set {STRICT_ENV}=1 to see the traceback",
            )
        finally:
            _loading = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, built on first use and cached.

    Loads every entry point of the ``canvas_engineering`` group (honouring the environment
    variables of the module docstring), then the plugins added with :func:`register_plugin`.
    """
    global _plugin_manager
    with _lock:
        if _plugin_manager is not None:
            return _plugin_manager
        if _loading is not None:
            msg = (
                f"the canvas_engineering plugin manager was requested while loading entry point "
                f"{_loading}; plugins must register through their hooks, not at import time"
            )
            raise RuntimeError(msg)
        pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        pm.add_hookspecs(hookspecs)
        _providers.clear()
        _load_entry_points(pm)
        for name, plugin in _in_process.items():
            try:
                _register(pm, plugin, name, _Provider(_IN_PROCESS, "", name))
            except Exception as exc:  # noqa: BLE001
                _fail(exc, f"could not re-register in-process plugin {name!r}: {type(exc).__name__}: {exc}")
        _plugin_manager = pm
        return pm


def _ordered(impls: list[Any]) -> list[Any]:
    """Non-wrapper hookimpls in load order, tryfirst ones first and trylast ones last."""
    plain = [i for i in impls if not (i.hookwrapper or i.wrapper)]
    return sorted(plain, key=lambda i: 0 if i.tryfirst else 2 if i.trylast else 1)


def _build_registry(pm: pluggy.PluginManager, registry: PluginRegistry) -> None:
    for hook_name, attr in PluginRegistry.HOOKS.items():
        kind: KindRegistry = getattr(registry, attr)
        for impl in _ordered(getattr(pm.hook, hook_name).get_hookimpls()):
            provider = _providers.get(impl.plugin_name, _Provider(_IN_PROCESS, "", impl.plugin_name))
            before = set(kind._entries)
            kind._provider = provider
            try:
                impl.function(**{a: kind for a in impl.argnames if a == "registry"})
            except Exception as exc:  # noqa: BLE001
                for added in set(kind._entries) - before:  # roll back a half-done hook
                    del kind._entries[added]
                _fail(
                    exc,
                    f"canvas_engineering hook {hook_name} of {_describe(provider)} raised "
                    f"{type(exc).__name__}: {exc}. Its registrations were skipped; set {STRICT_ENV}=1 "
                    "to see the traceback",
                )
            finally:
                kind._provider = _DIRECT


def get_registry() -> PluginRegistry:
    """The registry of everything the plugins provide, built on first use and cached.

    Each plugin's hookimpls are called one by one, so every entry records exactly which
    distribution and entry point provided it. A hook that raises is reported as a
    :class:`PluginLoadWarning` and its registrations are dropped; the others still load.
    Called re-entrantly while it is being built (e.g. by a hook that declares a
    ``Connection``), it returns what is registered so far.
    """
    global _registry, _building
    with _lock:
        if _registry is not None:
            return _registry
        if _building is not None:
            return _building
        pm = get_plugin_manager()
        registry = PluginRegistry()
        _building = registry
        try:
            _build_registry(pm, registry)
        finally:
            _building = None
        _registry = registry
        return registry


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object in-process (tests, notebooks); returns its name.

    Its entries record the distribution ``"(in-process)"``. Survives :func:`reset_plugins`
    until :func:`unregister_plugin`.

    Raises:
        ValueError: the name or the plugin object is already registered.
        pluggy.PluginValidationError: a hookimpl does not match its hookspec or names an
            unknown hook.
    """
    global _registry
    with _lock:
        pm = get_plugin_manager()
        name = name or pm.get_canonical_name(plugin)
        if name in _in_process:
            msg = f"in-process plugin name already registered: {name}={_in_process[name]!r}"
            raise ValueError(msg)
        _register(pm, plugin, name, _Provider(_IN_PROCESS, "", name))
        _in_process[name] = plugin
        _registry = None
        return name


def unregister_plugin(name: str) -> object:
    """Remove an in-process plugin added with :func:`register_plugin`; returns it.

    Raises:
        UnknownPluginError: no in-process plugin has that name.
    """
    global _registry
    with _lock:
        if name not in _in_process:
            raise UnknownPluginError("in-process plugin", name, list(_in_process))
        plugin = _in_process.pop(name)
        if _plugin_manager is not None and _plugin_manager.get_plugin(name) is not None:
            _plugin_manager.unregister(name=name)
            _providers.pop(name, None)
        _registry = None
        return plugin


def reset_plugins() -> None:
    """Drop the cached plugin manager and registry; the next use reloads the entry points.

    In-process plugins (:func:`register_plugin`) are kept and re-registered.
    """
    global _plugin_manager, _registry
    with _lock:
        _plugin_manager = None
        _registry = None
        _providers.clear()


def _installed_attention_types() -> list[str]:
    """Installed attention type names (the provider of :mod:`canvas_engineering.attention_types`).

    Builds the registry on first call. Returns ``[]`` while entry points are being imported
    (a plugin module that declares a ``Connection`` at import time) and the names registered
    so far while the registry is being built.
    """
    with _lock:
        if _loading is not None:
            return []
        return get_registry().attention_types.names()


# Only a function reference is stored: no entry point is touched until first use.
set_installed_types_provider(_installed_attention_types)
