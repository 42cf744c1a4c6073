"""The plugin host: entry-point discovery, guarded loading and registries with provenance.

A plugin is a module (or any object) with functions marked ``@canvas_engineering.hookimpl``
implementing the registrar hooks of :mod:`canvas_engineering.plugin_host.hookspecs`. A distribution
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

A :class:`PluginHost` owns one pluggy ``PluginManager`` and the registry built from it.
The library uses the cached :func:`default_host`; the module functions
(:func:`get_registry`, :func:`register_plugin`, ...) delegate to it. A test or an
application can build its own ``PluginHost(load_entry_points=False)`` (or with another
entry-point ``group``) and use its registry without touching the default one.

Loading is lazy: nothing happens when the package is imported or a host is built. The
first call to :meth:`PluginHost.registry` (or :meth:`PluginHost.plugin_manager`) loads every
entry point, each inside its own ``try``; a plugin that fails to import, fails validation or
whose hook raises is reported as a :class:`PluginLoadWarning` naming its distribution,
version and entry point, and the others still load. Every registered name records the
distribution, version and entry point that provided it; a name provided twice is refused
with a :class:`DuplicateRegistrationError` naming both providers. An object of the wrong
kind (see :func:`~canvas_engineering.plugin_host.registry.set_kind_check`) is refused when it
is added: a :class:`PluginLoadWarning` naming the distribution, and that hook's registrations
are skipped. :func:`register_plugin` runs an in-process plugin's hooks once against empty
registries, so it raises :class:`PluginRegistrationError` for such an object at once.

Environment variables (read when a host loads):

* ``CANVAS_ENGINEERING_STRICT_PLUGINS=1``: re-raise plugin failures instead of warning.
* ``CANVAS_ENGINEERING_BLOCK_PLUGINS=a,b``: skip entry points whose name or distribution
  is listed.
* ``CANVAS_ENGINEERING_DISABLE_PLUGIN_AUTOLOAD=1``: load only canvas-engineering's own
  entry points (the built-ins); third-party plugins can still be added in-process with
  :func:`register_plugin`.

``canvas-engineering plugins [--json]`` lists what is registered.

Foundation layer: imports nothing from canvas-engineering except :mod:`.errors`,
:mod:`.hookspecs` and :mod:`.plugin_registry`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import sys
import threading
import warnings
from typing import Any, Final

import pluggy

import canvas_engineering.plugin_host.hookspecs as hookspecs
import canvas_engineering.plugin_host.registry as plugin_registry
from canvas_engineering.errors import (
    PLUGIN_BLOCK_ENV,
    DuplicateRegistrationError,
    PluginHostReentryError,
    PluginLoadWarning,
    PluginRegistrationError,
    UnknownHookError,
    UnknownPluginError,
)
from canvas_engineering.plugin_host.hookspecs import PROJECT_NAME, hookimpl
from canvas_engineering.plugin_host.registry import IN_PROCESS, KindRegistry, PluginEntry, PluginRegistry, Provider

__all__ = [
    "BLOCK_ENV",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "DuplicateRegistrationError",
    "KindRegistry",
    "PluginEntry",
    "PluginHost",
    "PluginLoadWarning",
    "PluginRegistry",
    "Provider",
    "UnknownPluginError",
    "default_host",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "register_plugin",
    "reset_plugins",
    "unregister_plugin",
]

#: Entry-point group of canvas-engineering plugins (also the pluggy project name).
ENTRY_POINT_GROUP: Final = PROJECT_NAME
#: Set to ``1`` to re-raise plugin load and hook failures instead of warning.
STRICT_ENV: Final = "CANVAS_ENGINEERING_STRICT_PLUGINS"
#: Comma-separated entry-point or distribution names to skip.
BLOCK_ENV: Final = PLUGIN_BLOCK_ENV
#: Set to ``1`` to load only canvas-engineering's own (built-in) entry points.
DISABLE_AUTOLOAD_ENV: Final = "CANVAS_ENGINEERING_DISABLE_PLUGIN_AUTOLOAD"

_OWN_DISTRIBUTION: Final = "canvas-engineering"
# Frames in these files are skipped when a load warning picks the line it points at.
_HOST_FILES: Final = frozenset({__file__, plugin_registry.__file__})


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blocked() -> set[str]:
    return {_normalise(n.strip()) for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def _entry_point_provider(ep: importlib.metadata.EntryPoint) -> Provider:
    dist = getattr(ep, "dist", None)
    name = (getattr(dist, "name", None) or dist.metadata["Name"]) if dist is not None else None
    version = getattr(dist, "version", None) if dist is not None else None
    return Provider(name or "(unknown distribution)", version or "", ep.value, ep.name)


def _in_process_provider(name: str) -> Provider:
    return Provider(IN_PROCESS, "", name)


def _outside_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first frame outside the plugin host."""
    frame, level = sys._getframe(2), 2  # the caller of the function that warns
    while frame is not None and frame.f_code.co_filename in _HOST_FILES:
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


def _ordered(impls: list[Any]) -> list[Any]:
    """Non-wrapper hookimpls in load order, tryfirst ones first and trylast ones last."""
    plain = [i for i in impls if not (i.hookwrapper or i.wrapper)]
    return sorted(plain, key=lambda i: 0 if i.tryfirst else 2 if i.trylast else 1)


def _try_hooks(pm: pluggy.PluginManager, plugin: object, provider: Provider) -> None:
    """Call ``plugin``'s registrar hooks against empty kinds; raise what a kind refuses.

    Raises:
        PluginRegistrationError: a hook added an empty name or an object of the wrong kind.

    """
    scratch = PluginRegistry()
    for hook_name in PluginRegistry.HOOKS:
        kind = scratch.kind_for_hook(hook_name)
        for impl in _ordered(getattr(pm.hook, hook_name).get_hookimpls()):
            if impl.plugin is not plugin:
                continue
            try:
                with kind.registering_as(provider):
                    impl.function(**{a: kind for a in impl.argnames if a == "registry"})
            except PluginRegistrationError:
                raise
            except Exception:  # any other failure is reported when the kind fills, as for every plugin
                continue


class PluginHost:
    """One plugin manager, its lazily loaded entry points and the registry built from them.

    All state (the manager, the registry, the in-process plugins and the re-entrancy flags)
    belongs to the instance, so hosts are independent of each other; the library's own is
    :func:`default_host`. Methods are thread-safe.

    Args:
        group: entry-point group to load plugins from.
        load_entry_points: ``False`` loads no entry point at all: the host only knows the
            plugins added with :meth:`register` (tests, applications that compose their own).

    Example:
        >>> host = PluginHost(load_entry_points=False)
        >>> host.registry().attention_types.names()
        []

    """

    def __init__(self, *, group: str = ENTRY_POINT_GROUP, load_entry_points: bool = True) -> None:
        self.group = group
        self.load_entry_points = load_entry_points
        self._lock = threading.RLock()
        # None until first use: building a host loads nothing
        self._manager: pluggy.PluginManager | None = None
        self._registry: PluginRegistry | None = None
        # the registry being built: re-entrant calls see what is registered so far
        # "name = value" of the entry point being imported, while the manager is built
        self._loading: str | None = None
        # pluggy plugin name -> who provides it
        self._providers: dict[str, Provider] = {}
        # plugins added with register(), re-registered after reset()
        self._in_process: dict[str, object] = {}

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"PluginHost(group={self.group!r}, load_entry_points={self.load_entry_points}, {state})"

    @property
    def is_loaded(self) -> bool:
        """Whether the plugin manager has been built (entry points imported)."""
        return self._manager is not None

    # -- the plugin manager -------------------------------------------------------------

    def plugin_manager(self) -> pluggy.PluginManager:
        """Return the plugin manager, built on first use and cached.

        Loads every entry point of :attr:`group` (honouring the environment variables of
        the module docstring), then the plugins added with :meth:`register`.

        Raises:
            PluginHostReentryError: called while one of this host's entry points is being
                imported (a plugin must register through its hooks, not at import time).

        """
        with self._lock:
            if self._manager is not None:
                return self._manager
            if self._loading is not None:
                msg = (
                    f"the canvas_engineering plugin manager was requested while loading entry point "
                    f"{self._loading}; plugins must register through their hooks, not at import time"
                )
                raise PluginHostReentryError(msg)
            pm = pluggy.PluginManager(PROJECT_NAME)
            pm.add_hookspecs(hookspecs)
            self._providers.clear()
            if self.load_entry_points:
                self._load_entry_points(pm)
            for name, plugin in self._in_process.items():
                try:
                    self._add(pm, plugin, name, _in_process_provider(name))
                except Exception as exc:  # one bad in-process plugin must not hide the others
                    _fail(exc, f"could not re-register in-process plugin {name!r}: {type(exc).__name__}: {exc}")
            self._manager = pm
            return pm

    def _load_entry_points(self, pm: pluggy.PluginManager) -> None:
        blocked = _blocked()
        builtins_only = _env_flag(DISABLE_AUTOLOAD_ENV)
        for ep in importlib.metadata.entry_points(group=self.group):
            provider = _entry_point_provider(ep)
            dist = _normalise(provider.distribution)
            if _normalise(ep.name) in blocked or dist in blocked:
                continue
            if builtins_only and dist != _OWN_DISTRIBUTION:
                continue
            self._loading = f"{ep.name} = {ep.value}"
            try:
                plugin = ep.load()
                name = ep.name if pm.get_plugin(ep.name) is None else f"{provider.distribution}:{ep.name}"
                self._add(pm, plugin, name, provider)
            except Exception as exc:  # one broken plugin must not brick the tool
                _fail(
                    exc,
                    f"could not load canvas_engineering plugin from {provider.describe()}: "
                    f"{type(exc).__name__}: {exc}. It was skipped; uninstall it, block it with "
                    f"{BLOCK_ENV}={ep.name}, or set {STRICT_ENV}=1 to see the traceback",
                )
            finally:
                self._loading = None

    def _add(self, pm: pluggy.PluginManager, plugin: object, name: str, provider: Provider) -> None:
        """Register one plugin with ``pm``, refusing (or warning about) hooks no hookspec declares.

        Raises:
            pluggy.PluginValidationError: a hookimpl does not match its hookspec; an in-process
                plugin (or any plugin in strict mode) names an unknown hook (UnknownHookError).

        """
        pm.register(plugin, name=name)
        self._providers[name] = provider
        unknown = _unknown_hooks(pm, plugin)
        if not unknown:
            return
        known = ", ".join(sorted(PluginRegistry.HOOKS))
        msg = f"{provider.describe()} implements unknown hook(s) {', '.join(unknown)}; known hooks: {known}"
        if _env_flag(STRICT_ENV) or provider.distribution == IN_PROCESS:
            pm.unregister(plugin)
            del self._providers[name]
            raise UnknownHookError(plugin, msg)
        warnings.warn(PluginLoadWarning(msg + " (those hooks are ignored)"), stacklevel=_outside_stacklevel())

    # -- the registry --------------------------------------------------------------------

    def registry(self) -> PluginRegistry:
        """Return the registry of everything the plugins provide, built on first use and cached.

        Each kind (attention types, backbones, datamodules) is filled on its first access, so
        building attention never imports what datamodule plugins need (Lightning). Each
        plugin's hookimpls are called one by one, so every entry records exactly which
        distribution and entry point provided it. A hook that raises is reported as a
        :class:`PluginLoadWarning` and its registrations are dropped; the others still load.
        Called re-entrantly while a kind is being filled (e.g. by a hook that declares a
        ``Connection``), it returns the registry, whose kind holds what is registered so far.
        """
        with self._lock:
            if self._registry is not None:
                return self._registry
            pm = self.plugin_manager()
            registry = PluginRegistry(fill=functools.partial(self._fill_kind, pm))
            self._registry = registry
            return registry

    def available_registry(self) -> PluginRegistry | None:
        """Return :meth:`registry`, or ``None`` while this host is importing an entry point.

        For callers that may run inside a plugin module's import (a module that declares a
        ``Connection`` at import time): nothing is installed yet, so there is no registry to
        check against, and asking for one would recurse into the loading.
        """
        with self._lock:
            if self._loading is not None:
                return None
            return self.registry()

    def _fill_kind(self, pm: pluggy.PluginManager, hook_name: str, kind: KindRegistry) -> None:
        with self._lock:
            for impl in _ordered(getattr(pm.hook, hook_name).get_hookimpls()):
                provider = self._providers.get(impl.plugin_name, _in_process_provider(impl.plugin_name))
                try:
                    with kind.registering_as(provider):  # rolls back a half-done hook
                        impl.function(**{a: kind for a in impl.argnames if a == "registry"})
                except Exception as exc:  # a failing hook must not hide the other plugins
                    _fail(
                        exc,
                        f"canvas_engineering hook {hook_name} of {provider.describe()} raised "
                        f"{type(exc).__name__}: {exc}. Its registrations were skipped; set {STRICT_ENV}=1 "
                        "to see the traceback",
                    )

    # -- in-process plugins ------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object in-process (tests, notebooks); returns its name.

        Its entries record the distribution ``"(in-process)"``. Survives :meth:`reset`
        until :meth:`unregister`.

        Its hooks are called once here, against empty registries, so a registration that a
        kind refuses (an empty name, an object of the wrong kind) raises now, naming the
        plugin and the rule, and the plugin is not registered. Any other failure of a hook is
        left to the normal fill, which reports it as a :class:`PluginLoadWarning`.

        Raises:
            PluginRegistrationError: the name or the plugin object is already registered, or a
                hook registers something its kind refuses.
            pluggy.PluginValidationError: a hookimpl does not match its hookspec or names an
                unknown hook.

        """
        with self._lock:
            pm = self.plugin_manager()
            name = name or pm.get_canonical_name(plugin)
            if name in self._in_process:
                msg = f"in-process plugin name already registered: {name}={self._in_process[name]!r}"
                raise PluginRegistrationError(msg)
            if pm.get_plugin(name) is not None or pm.is_registered(plugin):
                taken = pm.get_name(plugin) or name
                msg = f"plugin {taken!r} is already registered (by {self._providers.get(taken, 'pluggy')})"
                raise PluginRegistrationError(msg)
            provider = _in_process_provider(name)
            self._add(pm, plugin, name, provider)
            try:
                _try_hooks(pm, plugin, provider)
            except PluginRegistrationError:
                pm.unregister(plugin)
                del self._providers[name]
                raise
            self._in_process[name] = plugin
            self._registry = None
            return name

    def unregister(self, name: str) -> object:
        """Remove an in-process plugin added with :meth:`register`; returns it.

        Raises:
            UnknownPluginError: no in-process plugin has that name.

        """
        with self._lock:
            if name not in self._in_process:
                raise UnknownPluginError("in-process plugin", name, list(self._in_process))
            plugin = self._in_process.pop(name)
            if self._manager is not None and self._manager.get_plugin(name) is not None:
                self._manager.unregister(name=name)
                self._providers.pop(name, None)
            self._registry = None
            return plugin

    def reset(self) -> None:
        """Drop the plugin manager and registry; the next use reloads the entry points.

        In-process plugins (:meth:`register`) are kept and re-registered.
        """
        with self._lock:
            self._manager = None
            self._registry = None
            self._providers.clear()


@functools.cache
def default_host() -> PluginHost:
    """Return the library's plugin host (built on first call, loads nothing until used).

    ``default_host.cache_clear()`` forgets it entirely, in-process plugins included;
    :func:`reset_plugins` only reloads it.
    """
    return PluginHost()


# -- the default host's API as functions (kept for existing callers) --------------------


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the default host's plugin manager (see :meth:`PluginHost.plugin_manager`)."""
    return default_host().plugin_manager()


def get_registry() -> PluginRegistry:
    """Return the default host's registry (see :meth:`PluginHost.registry`)."""
    return default_host().registry()


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin in-process with the default host (see :meth:`PluginHost.register`)."""
    return default_host().register(plugin, name)


def unregister_plugin(name: str) -> object:
    """Remove an in-process plugin from the default host (see :meth:`PluginHost.unregister`)."""
    return default_host().unregister(name)


def reset_plugins() -> None:
    """Reload the default host on next use, keeping in-process plugins (see :meth:`PluginHost.reset`)."""
    default_host().reset()
