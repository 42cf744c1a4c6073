"""The plugin host as an object: independent hosts, the cached default, layering, explicit registries.

Complements ``test_plugin_host.py`` (which exercises the default host through the module
functions): here every test builds its own :class:`PluginHost` and checks that the default
host is neither consulted nor changed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pluggy
import pytest
import torch
from lightning.pytorch import LightningDataModule

import canvas_engineering
from canvas_engineering import AttentionType, CanvasBackbone, errors
from canvas_engineering.cli.commands import main
from canvas_engineering.declare.attention_vocabulary import check_attention_type
from canvas_engineering.errors import (
    DuplicateRegistrationError,
    PluginError,
    PluginHostReentryError,
    PluginLoadWarning,
    PluginRegistrationError,
    UnknownAttentionTypeError,
    UnknownHookError,
    UnknownPluginError,
)
from canvas_engineering.plugin_host import hookspecs
from canvas_engineering.plugin_host import host as plugin_host
from canvas_engineering.plugin_host import registry as plugin_registry
from canvas_engineering.plugin_host.host import (
    BLOCK_ENV,
    PluginHost,
    default_host,
    get_registry,
    hookimpl,
    register_plugin,
    reset_plugins,
    unregister_plugin,
)
from canvas_engineering.plugin_host.registry import KindRegistry, Provider

PACKAGE = Path(canvas_engineering.__file__).parent


class DummyType(AttentionType):
    """Stands in for a registered class (an attention type: each kind checks what it is given)."""

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, mask: object, beta: float = 1.0) -> torch.Tensor:
        return queries


class DummyBackbone(CanvasBackbone):
    """Stands in for a registered backbone."""

    def forward(self, tokens: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return tokens


class DummyDataModule(LightningDataModule):
    """Stands in for a registered datamodule."""


#: hook -> a stand-in of the kind it fills
DUMMIES = {
    "register_attention_types": DummyType,
    "register_backbones": DummyBackbone,
    "register_datamodules": DummyDataModule,
}


def plugin_adding(hook: str, *names: str) -> object:
    """Build a plugin object whose ``hook`` adds ``names`` (each mapped to the stand-in of its kind)."""

    class Plugin:
        pass

    def impl(registry: KindRegistry) -> None:
        for n in names:
            registry.add(n, DUMMIES.get(hook, DummyType))

    impl.__name__ = hook
    setattr(Plugin, hook, staticmethod(hookimpl(impl)))
    return Plugin()


class FakeDist:
    """A distribution as ``importlib.metadata`` describes it."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.metadata = {"Name": name}


class FakeEntryPoint:
    """An entry point of ``group`` whose ``load`` calls ``load``."""

    def __init__(self, group: str, name: str, dist: FakeDist, load: Callable[[], object]) -> None:
        self.group = group
        self.name = name
        self.value = f"{name}_mod"
        self.dist = dist
        self._load = load

    def load(self) -> object:
        """Import the plugin."""
        return self._load()


@pytest.fixture
def fake_eps(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    """Replace the installed entry points (of every group) with a list the test fills."""
    eps: list[FakeEntryPoint] = []

    def entry_points(**params: object) -> list[FakeEntryPoint]:
        return [ep for ep in eps if ep.group == params.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return eps


def default_attention_names() -> set[str]:
    """Names in the default host's registry (the real entry points may be mid-development)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        return set(get_registry().attention_types)


# -- independent hosts ------------------------------------------------------------------


def test_two_hosts_are_independent_of_each_other_and_of_the_default() -> None:
    before = default_attention_names()
    first, second = PluginHost(load_entry_points=False), PluginHost(load_entry_points=False)
    first.register(plugin_adding("register_attention_types", "first_only"), name="p")
    second.register(plugin_adding("register_attention_types", "second_only"), name="p")  # same name, other host

    assert first.registry().attention_types.names() == ["first_only"]
    assert second.registry().attention_types.names() == ["second_only"]
    assert first.registry().attention_types["first_only"].distribution == "(in-process)"
    assert default_attention_names() == before  # the default host saw none of it

    first.unregister("p")
    assert first.registry().attention_types.names() == []
    assert second.registry().attention_types.names() == ["second_only"]
    with pytest.raises(UnknownPluginError, match="available: p"):
        second.unregister("q")


def test_a_host_registering_does_not_touch_the_default_host() -> None:
    host = PluginHost(load_entry_points=False)
    host.register(plugin_adding("register_backbones", "private_backbone"), name="private")
    assert "private_backbone" in host.registry().backbones
    assert "private_backbone" not in get_registry().backbones
    with pytest.raises(UnknownPluginError, match="in-process plugin 'private'"):
        unregister_plugin("private")  # it lives in `host`, not in the default one


def test_a_host_reads_its_own_entry_point_group(fake_eps: list[FakeEntryPoint]) -> None:
    fake_eps.append(
        FakeEntryPoint(
            "my_group", "mine", FakeDist("my-dist", "3.1"), lambda: plugin_adding("register_datamodules", "m")
        )
    )
    fake_eps.append(
        FakeEntryPoint(
            plugin_host.ENTRY_POINT_GROUP,
            "theirs",
            FakeDist("their-dist", "1"),
            lambda: plugin_adding("register_datamodules", "t"),
        )
    )
    mine, default_group = PluginHost(group="my_group"), PluginHost()
    entry = mine.registry().datamodules["m"]
    assert (entry.distribution, entry.version, entry.source) == ("my-dist", "3.1", "mine_mod")
    assert mine.registry().datamodules.names() == ["m"]
    assert default_group.registry().datamodules.names() == ["t"]
    assert PluginHost(group="my_group", load_entry_points=False).registry().datamodules.names() == []


def test_building_a_host_loads_nothing(fake_eps: list[FakeEntryPoint]) -> None:
    loads: list[str] = []
    fake_eps.append(
        FakeEntryPoint(plugin_host.ENTRY_POINT_GROUP, "x", FakeDist("x", "1"), lambda: loads.append("x") or object())
    )
    host = PluginHost()
    assert not host.is_loaded and loads == []
    assert "not loaded" in repr(host)
    host.registry()
    assert host.is_loaded and loads == ["x"]
    host.reset()
    assert not host.is_loaded
    host.plugin_manager()
    assert loads == ["x", "x"]


def test_reentry_during_import_is_refused_per_host(fake_eps: list[FakeEntryPoint]) -> None:
    host = PluginHost()

    def asks_at_import() -> object:
        assert host.available_registry() is None  # nothing is installed while importing
        host.plugin_manager()  # refused: plugins register through hooks
        return object()

    fake_eps.append(FakeEntryPoint(plugin_host.ENTRY_POINT_GROUP, "eager", FakeDist("eager-dist", "1"), asks_at_import))
    with pytest.warns(PluginLoadWarning, match=r"eager-dist 1 .*PluginHostReentryError.*not at import time"):
        assert host.registry().entries() == []
    assert issubclass(PluginHostReentryError, RuntimeError)


def test_in_process_plugins_survive_reset_but_not_a_new_host() -> None:
    host = PluginHost(load_entry_points=False)
    host.register(plugin_adding("register_attention_types", "kept"), name="kept")
    first = host.registry()
    assert host.registry() is first
    host.reset()
    assert host.registry() is not first and "kept" in host.registry().attention_types
    assert "kept" not in PluginHost(load_entry_points=False).registry().attention_types


def test_register_refuses_a_taken_name_or_object() -> None:
    host = PluginHost(load_entry_points=False)
    plugin = plugin_adding("register_backbones", "b")
    host.register(plugin, name="one")
    with pytest.raises(PluginRegistrationError, match="in-process plugin name already registered: one"):
        host.register(plugin_adding("register_backbones", "c"), name="one")
    with pytest.raises(PluginRegistrationError, match="plugin 'one' is already registered"):
        host.register(plugin, name="two")
    assert host.registry().backbones.names() == ["b"]


def test_unknown_hook_is_a_pluggy_validation_error() -> None:
    class Typo:
        @hookimpl
        def register_backbone(self, registry: KindRegistry) -> None:
            raise AssertionError("never called")

    host = PluginHost(load_entry_points=False)
    with pytest.raises(UnknownHookError, match="unknown hook.*register_backbone") as err:
        host.register(Typo(), name="typo")
    assert isinstance(err.value, pluggy.PluginValidationError) and isinstance(err.value, ValueError)
    assert host.plugin_manager().get_plugin("typo") is None


# -- the cached default host ---------------------------------------------------------------


def test_default_host_is_cached_and_the_functions_delegate_to_it() -> None:
    host = default_host()
    assert default_host() is host
    name = register_plugin(plugin_adding("register_backbones", "via_function"), name="via-function")
    try:
        assert "via_function" in host.registry().backbones
        assert get_registry() is host.registry()
        reset_plugins()
        assert default_host() is host and not host.is_loaded  # reloads, same host
        assert "via_function" in get_registry().backbones
    finally:
        unregister_plugin(name)
    assert "via_function" not in host.registry().backbones


def test_default_host_cache_clear_gives_a_fresh_host() -> None:
    old = default_host()
    default_host.cache_clear()
    try:
        assert default_host() is not old
        assert not default_host().is_loaded
    finally:
        default_host.cache_clear()  # later tests get a fresh default host either way


# -- the attention-type check with an explicit registry -------------------------------------


def test_check_attention_type_against_an_explicit_registry() -> None:
    host = PluginHost(load_entry_points=False)
    host.register(plugin_adding("register_attention_types", "hosted"), name="hosted")
    installed = host.registry().attention_types
    assert check_attention_type("hosted", "connection 'a'->'b'", installed) == "hosted"
    assert check_attention_type("cross_attention", "connection 'a'->'b'", installed) == "cross_attention"
    with pytest.raises(UnknownAttentionTypeError, match=r"connection 'a'->'b': unknown attention type 'nope'.*hosted"):
        check_attention_type("nope", "connection 'a'->'b'", installed)


def test_declaring_in_the_vocabulary_or_with_a_registry_loads_no_plugin() -> None:
    code = (
        "import sys\n"
        "from canvas_engineering import CanvasLayout, CanvasTopology, Connection, RegionSpec\n"
        "from canvas_engineering.plugin_host import host as ph\n"
        "from canvas_engineering.declare.attention_vocabulary import check_attention_type\n"
        "layout = CanvasLayout(T=2, H=2, W=2, d_model=8,\n"
        "    regions={'a': RegionSpec((0, 2, 0, 1, 0, 2), default_attn='mamba'), 'b': (0, 2, 1, 2, 0, 2)})\n"
        "CanvasTopology([Connection('a', 'b', fn='local_attention'), Connection('b', 'a')])\n"
        "host = ph.PluginHost(load_entry_points=False)\n"
        "try:\n"
        "    check_attention_type('not_installed', 'w', host.registry().attention_types)\n"
        "except KeyError:\n"
        "    pass\n"
        "assert not ph.default_host().is_loaded, 'the default host was loaded'\n"
        "assert not any(m.startswith('canvas_engineering.plugins') for m in sys.modules), 'a plugin was imported'\n"
        "print('lazy')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lazy"


# -- the CLI takes a registry -------------------------------------------------------------------


def test_cli_plugins_lists_the_registry_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    host = PluginHost(load_entry_points=False)
    host.register(plugin_adding("register_attention_types", "only_here"), name="only-here")
    assert main(["plugins", "--json"], registry=host.registry()) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"name": "only_here", "kind": "attention type", "distribution": "(in-process)", "version": ""}]


def test_canvas_cli_uses_the_registry_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    lightning_cli = pytest.importorskip("canvas_engineering.cli.lightning_cli")
    passed: list[dict[str, object]] = []

    def fake_init(self: object, *args: object, **kwargs: object) -> None:  # LightningCLI itself is not under test
        passed.append(kwargs)

    monkeypatch.setattr(lightning_cli.LightningCLI, "__init__", fake_init)
    registry = PluginHost(load_entry_points=False).registry()
    cli = lightning_cli.run_lightning_cli(["fit"], run=False, registry=registry)
    assert cli.registry is registry
    assert passed[-1]["args"] == ["fit"] and "registry" not in passed[-1]
    assert lightning_cli.CanvasCLI(run=False).registry is get_registry()  # default: the default host's


def test_canvas_cli_hands_its_registry_to_a_model_that_takes_one() -> None:
    lightning_cli = pytest.importorskip("canvas_engineering.cli.lightning_cli")
    from jsonargparse import Namespace

    cli = lightning_cli.CanvasCLI.__new__(lightning_cli.CanvasCLI)  # only the hook is under test
    cli.registry = PluginHost(load_entry_points=False).registry()
    cli.subcommand = "fit"
    cli.config = Namespace(fit=Namespace(model=Namespace(registry=None, lr=1.0)))
    cli.before_instantiate_classes()
    assert cli.config.fit.model.registry is cli.registry and cli.config.fit.model.lr == 1.0
    cli.subcommand, cli.config = None, Namespace(model=Namespace(lr=1.0))  # a model without the argument
    cli.before_instantiate_classes()
    assert "registry" not in cli.config.model


# -- errors, re-exports and layering ------------------------------------------------------------


def test_plugin_errors_live_in_errors_and_are_re_exported() -> None:
    for name in ("DuplicateRegistrationError", "PluginLoadWarning", "UnknownPluginError"):
        assert getattr(plugin_host, name) is getattr(errors, name) is getattr(canvas_engineering, name)
    for name in ("KindRegistry", "PluginEntry", "PluginRegistry", "Provider"):
        assert getattr(plugin_host, name) is getattr(plugin_registry, name)
    assert plugin_host.hookimpl is hookspecs.hookimpl is canvas_engineering.hookimpl
    assert issubclass(DuplicateRegistrationError, ValueError) and issubclass(UnknownPluginError, KeyError)
    assert issubclass(PluginLoadWarning, UserWarning)
    for cls in (DuplicateRegistrationError, UnknownPluginError, PluginHostReentryError, UnknownHookError):
        assert issubclass(cls, PluginError) and issubclass(cls, errors.CanvasError)


def test_duplicate_message_points_at_the_block_variable() -> None:
    kind = KindRegistry("backbone")
    with kind.registering_as(Provider("dist-a", "1", "a_mod", "a")):
        kind.add("x", DummyBackbone)
    with pytest.raises(DuplicateRegistrationError, match=rf"dist-a 1 \(a_mod\).*{BLOCK_ENV}=") as err:
        kind.add("x", DummyBackbone)
    assert err.value.providers == ("(in-process) (direct registry.add)", "dist-a 1 (a_mod)")


def test_registering_as_rolls_back_a_failed_block() -> None:
    kind = KindRegistry("datamodule")
    kind.add("kept", DummyDataModule)
    with pytest.raises(RuntimeError), kind.registering_as(Provider("d", "", "m")):
        kind.add("dropped", DummyDataModule)
        raise RuntimeError("hook failed")
    assert kind.names() == ["kept"]
    kind.add("after", DummyDataModule)  # the provider is reset after the block
    assert kind["after"].distribution == "(in-process)"


def _imported_modules(path: Path) -> set[str]:
    """canvas_engineering modules ``path`` imports at run time (anywhere but under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    type_checking_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "canvas_engineering":
            found |= {f"canvas_engineering.{a.name}" for a in node.names}  # submodules
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.startswith("canvas_engineering")}


#: module -> the canvas_engineering modules it may import (the plugin host is the foundation layer)
ALLOWED_IMPORTS = {
    "plugin_host/hookspecs": set(),
    "plugin_host/registry": {"canvas_engineering.errors"},
    "plugin_host/host": {
        "canvas_engineering.errors",
        "canvas_engineering.plugin_host.hookspecs",
        "canvas_engineering.plugin_host.registry",
    },
    # declaration layer: may use the foundation, never the execution layer
    "declare/attention_vocabulary": {"canvas_engineering.errors", "canvas_engineering.plugin_host.host"},
}


@pytest.mark.parametrize("module", sorted(ALLOWED_IMPORTS))
def test_plugin_host_modules_respect_the_layers(module: str) -> None:
    assert _imported_modules(PACKAGE / f"{module}.py") <= ALLOWED_IMPORTS[module]


@pytest.mark.parametrize(
    "module", ["plugin_host/host", "plugin_host/registry", "plugin_host/hookspecs", "declare/attention_vocabulary"]
)
def test_no_global_statements(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)]
