"""Registries of what plugins provide, with the provenance of every name.

A :class:`PluginRegistry` holds one :class:`KindRegistry` per registrar hook (attention
types, backbones, datamodules). A hook receives the kind registry and calls
``registry.add(name, obj)``; the registry records which :class:`Provider` (distribution,
version, entry point) is registering, refuses a name provided twice naming both
providers, and lists the available names when an unknown one is requested.

Every kind has a *check* that ``add`` runs before recording a name: an object of the wrong
kind (a function registered as an attention type, a backbone class that is no
``CanvasBackbone``, a datamodule that is no ``LightningDataModule``) is refused there with a
:class:`PluginRegistrationError` naming the kind, the name, the provider and the rule, so it
never fails later, far from the plugin that registered it. The plugin host turns that error
into a :class:`PluginLoadWarning` naming the distribution and skips the hook's registrations;
in-process :func:`register_plugin` raises it.

The kinds are defined above this layer (``AttentionType`` in the attention layer,
``CanvasBackbone`` in the models layer), so their layers install the checks with
:func:`set_kind_check` when they are imported (importing ``canvas_engineering`` imports
both). The datamodule kind is Lightning's ``LightningDataModule``, not a canvas-engineering
class: its check lives here and imports Lightning only when a datamodule is added.

Foundation layer: imports nothing from canvas-engineering except :mod:`.errors`. The
plugin host (:mod:`canvas_engineering.plugin_host.host`) fills these registries; a registry
can also be built by hand (tests, applications that compose their own).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from canvas_engineering.errors import DuplicateRegistrationError, PluginRegistrationError, UnknownPluginError

__all__ = [
    "IN_PROCESS",
    "KindCheck",
    "KindRegistry",
    "PluginEntry",
    "PluginRegistry",
    "Provider",
    "class_rule",
    "describe_object",
    "kind_check",
    "set_kind_check",
]

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


# -- kind checks ------------------------------------------------------------------------

#: ``check(obj)``: the rule ``obj`` breaks for its kind, as a sentence naming what it got,
#: or ``None`` when ``obj`` is of the kind.
KindCheck = Callable[[Any], "str | None"]

# kind name -> its check; filled by the layers that define the kinds (see set_kind_check)
_KIND_CHECKS: dict[str, KindCheck] = {}


def set_kind_check(kind: str, check: KindCheck | None) -> None:
    """Install the check every ``KindRegistry(kind).add`` runs (``None`` removes it).

    Called by the layer that defines a kind, when it is imported: the attention layer for
    ``"attention type"``, the models layer for ``"backbone"``. A later call replaces the check.

    Args:
        kind: the kind's name, as in ``KindRegistry(kind)``.
        check: returns the broken rule (naming what it got) or ``None`` when the object fits.

    """
    if check is None:
        _KIND_CHECKS.pop(kind, None)
    else:
        _KIND_CHECKS[kind] = check


def kind_check(kind: str) -> KindCheck | None:
    """Return the check installed for ``kind`` (``None``: anything is accepted)."""
    return _KIND_CHECKS.get(kind)


def describe_object(obj: Any) -> str:
    """Name ``obj`` for a refusal: ``"the class pkg.Cls"``, ``"the function pkg.f"``, ``"an instance of pkg.Cls"``."""
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if inspect.isroutine(obj):
        return f"the function {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    cls = type(obj)
    shown = repr(obj)
    value = f" ({shown})" if len(shown) <= 60 and "\n" not in shown else ""  # short one-line values only
    return f"an instance of {cls.__module__}.{cls.__qualname__}{value}"


def class_rule(obj: Any, base: type, base_name: str, built_as: str) -> str | None:
    """Return the rule ``obj`` breaks as a concrete subclass of ``base``, or ``None``.

    Args:
        obj: the registered object.
        base: the class it must derive from.
        base_name: how messages name ``base`` (``"canvas_engineering.AttentionType"``).
        built_as: how the registry builds it (``"cls(d_model=..., n_heads=..., **config)"``).

    """
    wanted = f"must be a concrete subclass of {base_name} (built as {built_as})"
    if not isinstance(obj, type):
        return f"{wanted}; got {describe_object(obj)}"
    if not issubclass(obj, base):
        return f"{wanted}; got {describe_object(obj)}, which does not derive from {base_name}"
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        return f"{wanted}; got {describe_object(obj)}, which is abstract (does not implement {missing})"
    return None


def _datamodule_rule(obj: Any) -> str | None:
    """Check a datamodule: a concrete ``lightning.pytorch.LightningDataModule`` subclass."""
    try:
        # imported here, when a datamodule is added: the registry itself never needs Lightning
        from lightning.pytorch import LightningDataModule
    except ImportError:
        return "needs lightning, which is not installed: pip install 'canvas-engineering[train]'"
    return class_rule(obj, LightningDataModule, "lightning.pytorch.LightningDataModule", "cls(**config)")


set_kind_check("datamodule", _datamodule_rule)


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
            PluginRegistrationError: ``name`` is not a non-empty string, or ``obj`` is not of this
                kind (the kind's check, see :func:`set_kind_check`; the message names the
                provider and the rule). A ``ValueError``.
            DuplicateRegistrationError: ``name`` is already registered (names both providers).

        """
        p = self._provider
        if not isinstance(name, str) or not name:
            msg = f"{self.kind} name must be a non-empty string, got {name!r} from {p}"
            raise PluginRegistrationError(msg)
        check = kind_check(self.kind)
        broken = check(obj) if check is not None else None
        if broken is not None:
            msg = f"{self.kind} {name!r} from {p.describe()} is refused: it {broken}"
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
