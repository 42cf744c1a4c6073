"""Registries of what plugins provide, with the provenance of every name.

A :class:`PluginRegistry` holds one :class:`KindRegistry` per registrar hook (attention
types, backbones, datamodules). A hook receives the kind registry and calls
``registry.add(name, obj)``; the registry records which :class:`Provider` (distribution,
version, entry point) is registering, refuses a name provided twice naming both
providers, and lists the available names when an unknown one is requested.

Foundation layer: imports nothing from canvas-engineering except :mod:`.errors`. The
plugin host (:mod:`canvas_engineering.plugin_host.host`) fills these registries; a registry
can also be built by hand (tests, applications that compose their own).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from canvas_engineering.errors import DuplicateRegistrationError, PluginRegistrationError, UnknownPluginError

__all__ = ["IN_PROCESS", "KindRegistry", "PluginEntry", "PluginRegistry", "Provider"]

#: Distribution recorded for plugins registered in-process (not through an entry point).
IN_PROCESS: Final = "(in-process)"


@dataclass(frozen=True)
class Provider:
    """Who is registering: a distribution's entry point, or an in-process plugin.

    Attributes:
        distribution: distribution name, or ``"(in-process)"``.
        version: distribution version, ``""`` when unknown.
        source: entry-point value (the plugin module) or the in-process plugin name.
        entry_point: entry-point name, ``""`` for in-process plugins.

    """

    distribution: str
    version: str
    source: str
    entry_point: str = ""

    def __str__(self) -> str:
        """``"distribution version (source)"``, the short form used in registry messages."""
        return f"{self._distribution_and_version()} ({self.source})"

    def describe(self) -> str:
        """Describe the provider for load warnings, naming the entry point or in-process plugin."""
        if self.entry_point:
            where = f"entry point {self.entry_point} = {self.source}"
        else:
            where = f"plugin {self.source!r}"
        return f"{self._distribution_and_version()} ({where})"

    def _distribution_and_version(self) -> str:
        return f"{self.distribution} {self.version}" if self.version else self.distribution


#: The provider recorded by a direct ``KindRegistry.add`` outside any hook.
DIRECT_PROVIDER: Final = Provider(IN_PROCESS, "", "direct registry.add")


@dataclass(frozen=True)
class PluginEntry:
    """One registered name and where it came from.

    Attributes:
        name: the registered name, e.g. ``"talking_heads"``.
        kind: ``"attention type"``, ``"backbone"`` or ``"datamodule"``.
        obj: the registered object (class or factory).
        distribution: providing distribution, ``"(in-process)"`` for in-process plugins.
        version: distribution version, ``""`` when unknown.
        source: entry-point value (the plugin module) or the in-process plugin name.

    """

    name: str
    kind: str
    obj: Any
    distribution: str
    version: str
    source: str

    @property
    def provider(self) -> str:
        """``"distribution version (source)"``."""
        return str(Provider(self.distribution, self.version, self.source))


class KindRegistry:
    """The registered objects of one kind; passed to the registrar hooks.

    Args:
        kind: human-readable kind used in messages, e.g. ``"attention type"``.

    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, PluginEntry] = {}
        self._provider: Provider = DIRECT_PROVIDER

    def add(self, name: str, obj: Any) -> None:
        """Register ``obj`` under ``name``, recording the plugin that is registering.

        Raises:
            PluginRegistrationError: ``name`` is not a non-empty string (a ``ValueError``).
            DuplicateRegistrationError: ``name`` is already registered (names both providers).

        """
        p = self._provider
        if not isinstance(name, str) or not name:
            msg = f"{self.kind} name must be a non-empty string, got {name!r} from {p}"
            raise PluginRegistrationError(msg)
        if name in self._entries:
            raise DuplicateRegistrationError(self.kind, name, str(p), self._entries[name].provider)
        self._entries[name] = PluginEntry(name, self.kind, obj, p.distribution, p.version, p.source)

    @contextmanager
    def registering_as(self, provider: Provider) -> Iterator[KindRegistry]:
        """Attribute every ``add`` inside the block to ``provider``.

        If the block raises, the names it added are removed again (a half-done hook leaves
        nothing behind) and the exception propagates.
        """
        before = set(self._entries)
        self._provider = provider
        try:
            yield self
        except BaseException:
            for added in set(self._entries) - before:
                del self._entries[added]
            raise
        finally:
            self._provider = DIRECT_PROVIDER

    def __getitem__(self, name: str) -> PluginEntry:
        """Return the entry of ``name``.

        Raises:
            UnknownPluginError: ``name`` is not registered (lists the available names).

        """
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownPluginError(self.kind, name, list(self._entries)) from None

    def get(self, name: str, default: PluginEntry | None = None) -> PluginEntry | None:
        """Return the entry of ``name``, or ``default``."""
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[PluginEntry]:
        """Return the registered entries, in registration order."""
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"KindRegistry({self.kind!r}, names={self.names()})"


class PluginRegistry:
    """Everything the plugins registered, by kind (see :meth:`PluginHost.registry`)."""

    #: hook name -> attribute holding its :class:`KindRegistry`
    HOOKS: Final = {
        "register_attention_types": "attention_types",
        "register_backbones": "backbones",
        "register_datamodules": "datamodules",
    }

    def __init__(self, fill: Callable[[str, KindRegistry], None] | None = None) -> None:
        """Create empty kinds; ``fill(hook_name, kind)``, if given, fills each on its first access.

        The plugin host passes ``fill``, so asking for attention types never imports what the
        datamodule plugins need.
        """
        self._kinds = {
            "register_attention_types": KindRegistry("attention type"),
            "register_backbones": KindRegistry("backbone"),
            "register_datamodules": KindRegistry("datamodule"),
        }
        self._fill = fill
        self._filled: set[str] = set()

    @property
    def attention_types(self) -> KindRegistry:
        """Attention types (filled on first access)."""
        return self._filled_kind("register_attention_types")

    @property
    def backbones(self) -> KindRegistry:
        """Backbones (filled on first access)."""
        return self._filled_kind("register_backbones")

    @property
    def datamodules(self) -> KindRegistry:
        """Datamodules (filled on first access)."""
        return self._filled_kind("register_datamodules")

    def _filled_kind(self, hook_name: str) -> KindRegistry:
        kind = self._kinds[hook_name]
        if self._fill is not None and hook_name not in self._filled:
            self._filled.add(hook_name)  # first: a hook reading its own kind sees what is registered so far
            self._fill(hook_name, kind)
        return kind

    def kind_for_hook(self, hook_name: str) -> KindRegistry:
        """Return the kind registry that hook ``hook_name`` fills (without filling it)."""
        return self._kinds[hook_name]

    def kinds(self) -> list[KindRegistry]:
        """Return the kind registries, in hook order (each filled)."""
        return [self._filled_kind(hook) for hook in self.HOOKS]

    def entries(self) -> list[PluginEntry]:
        """Every registered entry of every kind."""
        return [e for kind in self.kinds() for e in kind.entries()]
