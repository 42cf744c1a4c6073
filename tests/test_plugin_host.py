"""The plugin host: lazy guarded loading, provenance, duplicates, opt-outs and the CLI listing.

Entry points are faked by monkeypatching ``importlib.metadata.entry_points`` with tiny
``FakeEntryPoint``/``FakeDist`` objects (pluggy's own test pattern); in-process plugins use
the ``register_plugin`` ... ``unregister_plugin`` fixture pattern (datasette).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator

import pluggy
import pytest
import torch
from lightning.pytorch import LightningDataModule

import canvas_engineering
from canvas_engineering import AttentionType, CanvasBackbone
from canvas_engineering.cli.commands import main
from canvas_engineering.declare.topology import Connection
from canvas_engineering.errors import UnknownAttentionTypeError
from canvas_engineering.plugin_host import hookspecs
from canvas_engineering.plugin_host.host import (
    BLOCK_ENV,
    DISABLE_AUTOLOAD_ENV,
    ENTRY_POINT_GROUP,
    STRICT_ENV,
    DuplicateRegistrationError,
    KindRegistry,
    PluginLoadWarning,
    UnknownPluginError,
    get_registry,
    hookimpl,
    register_plugin,
    reset_plugins,
    unregister_plugin,
)


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


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.metadata = {"Name": name}


class FakeEntryPoint:
    group = ENTRY_POINT_GROUP

    def __init__(self, name: str, value: str, dist: FakeDist, load: Callable[[], object]) -> None:
        self.name = name
        self.value = value
        self.dist = dist
        self._load = load

    def load(self) -> object:
        return self._load()


def plugin_adding(hook: str, *names: str) -> object:
    """A plugin object whose ``hook`` adds ``names`` (each mapped to the stand-in of its kind)."""

    class Plugin:
        pass

    def impl(registry: KindRegistry) -> None:
        for n in names:
            registry.add(n, DUMMIES.get(hook, DummyType))

    impl.__name__ = hook
    setattr(Plugin, hook, staticmethod(hookimpl(impl)))
    return Plugin()


def raise_import_error() -> object:
    raise ImportError("No module named 'missing_dependency'")


@pytest.fixture(autouse=True)
def _fresh_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in (STRICT_ENV, BLOCK_ENV, DISABLE_AUTOLOAD_ENV):
        monkeypatch.delenv(var, raising=False)
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def fake_eps(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    """Replace the installed entry points with a list the test fills."""
    eps: list[FakeEntryPoint] = []

    def entry_points(**params: object) -> list[FakeEntryPoint]:
        return list(eps) if params.get("group") == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return eps


@pytest.fixture
def inproc_plugin() -> Iterator[str]:
    """An in-process plugin providing the attention type ``inproc_attention``."""
    name = register_plugin(plugin_adding("register_attention_types", "inproc_attention"), name="inproc-test")
    try:
        yield name
    finally:
        unregister_plugin(name)


# -- hooks ---------------------------------------------------------------------------


def test_hook_register_attention_types(fake_eps: list[FakeEntryPoint], inproc_plugin: str) -> None:
    entry = get_registry().attention_types["inproc_attention"]
    assert entry.obj is DummyType
    assert (entry.kind, entry.distribution, entry.version, entry.source) == (
        "attention type",
        "(in-process)",
        "",
        "inproc-test",
    )
    # the installed-types provider makes the name valid in a Connection
    assert Connection("a", "b", fn="inproc_attention").fn == "inproc_attention"
    with pytest.raises(UnknownAttentionTypeError, match="inproc_attention"):
        Connection("a", "b", fn="no_such_type")


def test_hook_register_backbones(fake_eps: list[FakeEntryPoint]) -> None:
    fake_eps.append(
        FakeEntryPoint("bb", "bb_mod", FakeDist("bb-dist", "1.2"), lambda: plugin_adding("register_backbones", "tiny"))
    )
    entry = get_registry().backbones["tiny"]
    assert (entry.name, entry.kind, entry.distribution, entry.version, entry.source) == (
        "tiny",
        "backbone",
        "bb-dist",
        "1.2",
        "bb_mod",
    )
    assert entry.provider == "bb-dist 1.2 (bb_mod)"


def test_hook_register_datamodules(fake_eps: list[FakeEntryPoint]) -> None:
    name = register_plugin(plugin_adding("register_datamodules", "moving_squares"), name="dm")
    try:
        registry = get_registry()
        assert "moving_squares" in registry.datamodules
        assert registry.datamodules.names() == ["moving_squares"]
        assert [e.name for e in registry.entries()] == ["moving_squares"]
    finally:
        unregister_plugin(name)
    assert "moving_squares" not in get_registry().datamodules


def test_hookimpl_may_take_no_arguments(fake_eps: list[FakeEntryPoint]) -> None:
    calls = []

    class Plugin:
        @hookimpl
        def register_backbones(self) -> None:
            calls.append(1)

    register_plugin(Plugin(), name="noargs")
    try:
        assert calls == [1]  # register_plugin tries the hooks once, against empty kinds
        registry = get_registry()
        assert calls == [1]  # kinds fill on first access
        assert len(registry.backbones) >= 0
        assert calls == [1, 1]
    finally:
        unregister_plugin("noargs")


# -- meta-tests (datasette): every hook has a test and documents its arguments --------


def _hookspecs() -> dict[str, Callable[..., object]]:
    return {n: f for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, f"{ENTRY_POINT_GROUP}_spec")}


def test_hookspecs_found() -> None:
    assert set(_hookspecs()) == {"register_attention_types", "register_backbones", "register_datamodules"}


@pytest.mark.parametrize("hook", sorted(_hookspecs()))
def test_every_hook_has_a_test(hook: str) -> None:
    assert f"test_hook_{hook}" in globals(), f"hook {hook} has no test_hook_{hook} in {__file__}"


@pytest.mark.parametrize("hook", sorted(_hookspecs()))
def test_every_hook_documents_its_arguments(hook: str) -> None:
    spec = _hookspecs()[hook]
    doc = inspect.getdoc(spec) or ""
    assert doc.splitlines()[0].strip(), f"hook {hook} has no one-line summary"
    for arg in inspect.signature(spec).parameters:
        assert f":param {arg}:" in doc, f"hook {hook} does not document argument {arg!r}"
    assert ":return:" in doc or ":returns:" in doc


def test_hookimpl_marker_is_documented() -> None:
    assert canvas_engineering.hookimpl is hookimpl is hookspecs.hookimpl
    lines = inspect.getsource(hookspecs).splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("hookimpl = "))
    assert lines[i - 1].startswith("#:"), "hookimpl needs a #: doc comment"


# -- registry errors ------------------------------------------------------------------


def test_duplicate_name_refused_naming_both_sources(fake_eps: list[FakeEntryPoint]) -> None:
    for dist, version, ep in [("dist-a", "1.0", "a"), ("dist-b", "2.0", "b")]:
        fake_eps.append(
            FakeEntryPoint(
                ep, f"{ep}_mod", FakeDist(dist, version), lambda: plugin_adding("register_attention_types", "dup")
            )
        )
    with pytest.warns(PluginLoadWarning) as record:
        registry = get_registry()
        registry.attention_types  # noqa: B018 - a kind fills (and reports) on first access
    (message,) = [str(w.message) for w in record]
    assert "attention type 'dup'" in message
    assert "dist-b 2.0 (b_mod)" in message and "dist-a 1.0 (a_mod)" in message
    assert registry.attention_types["dup"].distribution == "dist-a"  # the first provider keeps it

    reset_plugins()
    os.environ[STRICT_ENV] = "1"
    try:
        with pytest.raises(DuplicateRegistrationError) as err:
            get_registry().attention_types  # noqa: B018
    finally:
        del os.environ[STRICT_ENV]
    assert err.value.providers == ("dist-b 2.0 (b_mod)", "dist-a 1.0 (a_mod)")
    assert isinstance(err.value, ValueError)


def test_duplicate_on_kind_registry_directly() -> None:
    kind = KindRegistry("backbone")
    kind.add("x", DummyBackbone)
    with pytest.raises(DuplicateRegistrationError, match=r"backbone 'x': provided by \(in-process\)"):
        kind.add("x", DummyBackbone)
    with pytest.raises(ValueError, match="non-empty string"):
        kind.add("", DummyBackbone)


def test_unknown_name_lists_available_names(fake_eps: list[FakeEntryPoint]) -> None:
    register_plugin(plugin_adding("register_backbones", "zeta", "alpha", "mid"), name="bbs")
    try:
        with pytest.raises(UnknownPluginError) as err:
            get_registry().backbones["nope"]
    finally:
        unregister_plugin("bbs")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == (
        "unknown backbone 'nope'; available: alpha, mid, zeta. "
        "Install a plugin that provides it (see `canvas-engineering plugins`)"
    )
    assert err.value.available == ["alpha", "mid", "zeta"]


# -- guarded loading -------------------------------------------------------------------


def _broken_and_good(fake_eps: list[FakeEntryPoint]) -> None:
    def bad_hook_plugin() -> object:
        class Plugin:
            @hookimpl
            def register_attention_types(self, registry: KindRegistry) -> None:
                registry.add("half_done", DummyType)
                raise RuntimeError("hook exploded")

        return Plugin()

    fake_eps.extend(
        [
            FakeEntryPoint("broken", "broken_mod", FakeDist("broken-dist", "0.3"), raise_import_error),
            FakeEntryPoint("badhook", "badhook_mod", FakeDist("badhook-dist", "0.4"), bad_hook_plugin),
            FakeEntryPoint(
                "good",
                "good_mod",
                FakeDist("good-dist", "1.0"),
                lambda: plugin_adding("register_attention_types", "good_attention"),
            ),
        ]
    )


def test_broken_plugins_warn_and_others_still_load(fake_eps: list[FakeEntryPoint]) -> None:
    _broken_and_good(fake_eps)
    with pytest.warns(PluginLoadWarning) as record:
        registry = get_registry()
        registry.attention_types  # noqa: B018 - a kind fills (and reports) on first access
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    load_msg, hook_msg = messages
    assert "broken-dist 0.3 (entry point broken = broken_mod)" in load_msg
    assert "ImportError: No module named 'missing_dependency'" in load_msg
    assert f"{BLOCK_ENV}=broken" in load_msg
    assert "register_attention_types of badhook-dist 0.4 (entry point badhook = badhook_mod)" in hook_msg
    assert "RuntimeError: hook exploded" in hook_msg
    assert registry.attention_types.names() == ["good_attention"]  # half_done was rolled back
    assert registry.attention_types["good_attention"].distribution == "good-dist"


def test_strict_env_reraises(fake_eps: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_and_good(fake_eps)
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(ImportError, match="missing_dependency"):
        get_registry()
    fake_eps.pop(0)
    reset_plugins()
    with pytest.raises(RuntimeError, match="hook exploded"):
        get_registry().attention_types  # noqa: B018


@pytest.mark.parametrize("blocked", ["broken,badhook", "broken-dist, badhook_dist"], ids=["entry-point", "dist"])
def test_block_list_env(fake_eps: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch, blocked: str) -> None:
    _broken_and_good(fake_eps)
    monkeypatch.setenv(BLOCK_ENV, blocked)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        registry = get_registry()
    assert registry.attention_types.names() == ["good_attention"]


def test_disable_autoload_keeps_only_builtins(fake_eps: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_and_good(fake_eps)
    fake_eps.append(
        FakeEntryPoint(
            "attention",
            "builtin_mod",
            FakeDist("canvas-engineering", "0.1.0"),
            lambda: plugin_adding("register_attention_types", "builtin_attention"),
        )
    )
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert get_registry().attention_types.names() == ["builtin_attention"]


def test_plugin_declaring_connections_does_not_recurse(fake_eps: list[FakeEntryPoint]) -> None:
    def import_time_connection() -> object:
        Connection("a", "b", fn="talks_at_import")  # nothing is registered yet: unknown
        return object()

    class HookTimePlugin:
        @hookimpl
        def register_attention_types(self, registry: KindRegistry) -> None:
            registry.add("first_type", DummyType)
            Connection("a", "b", fn="first_type")  # sees what is registered so far
            registry.add("second_type", DummyType)

    fake_eps.append(FakeEntryPoint("early", "early_mod", FakeDist("early-dist", "1"), import_time_connection))
    fake_eps.append(FakeEntryPoint("hooky", "hooky_mod", FakeDist("hooky-dist", "1"), HookTimePlugin))
    with pytest.warns(PluginLoadWarning, match=r"early-dist 1 .*UnknownAttentionTypeError.*talks_at_import"):
        registry = get_registry()
    assert registry.attention_types.names() == ["first_type", "second_type"]


def test_unknown_hook_warns(fake_eps: list[FakeEntryPoint]) -> None:
    class Typo:
        @hookimpl
        def register_attention_type(self, registry: KindRegistry) -> None:  # missing "s"
            raise AssertionError("never called")

    fake_eps.append(FakeEntryPoint("typo", "typo_mod", FakeDist("typo-dist", "1"), Typo))
    with pytest.warns(PluginLoadWarning, match="typo-dist 1 .*unknown hook.*register_attention_type"):
        get_registry()


def test_register_plugin_validates(fake_eps: list[FakeEntryPoint], inproc_plugin: str) -> None:
    with pytest.raises(ValueError, match="inproc-test"):
        register_plugin(plugin_adding("register_backbones", "x"), name=inproc_plugin)

    class Typo:
        @hookimpl
        def register_backbone(self, registry: KindRegistry) -> None:
            raise AssertionError("never called")

    with pytest.raises(pluggy.PluginValidationError, match="register_backbone"):
        register_plugin(Typo(), name="typo")
    with pytest.raises(UnknownPluginError, match="available: inproc-test"):
        unregister_plugin("typo")


def test_reset_keeps_in_process_plugins(fake_eps: list[FakeEntryPoint], inproc_plugin: str) -> None:
    first = get_registry()
    assert get_registry() is first  # cached
    reset_plugins()
    second = get_registry()
    assert second is not first
    assert "inproc_attention" in second.attention_types


def test_import_is_lazy() -> None:
    code = (
        "import sys, canvas_engineering\n"
        "from canvas_engineering.plugin_host import host as ph\n"
        "from canvas_engineering.declare.topology import Connection\n"
        "Connection('a', 'b', fn='cross_attention')\n"  # a declared name needs no registry
        "assert not ph.default_host().is_loaded, 'plugins loaded at import'\n"
        "assert 'canvas_engineering.plugins.attention' not in sys.modules\n"
        "print('lazy')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lazy"


# -- CLI -------------------------------------------------------------------------------


def test_cli_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # the real entry points may be mid-development
        builtin = "cross_attention" in get_registry().attention_types
    name = None if builtin else register_plugin(plugin_adding("register_attention_types", "cli_attention"), "cli")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginLoadWarning)
            assert main(["plugins", "--json"]) == 0
    finally:
        if name:
            unregister_plugin(name)
    rows = json.loads(capsys.readouterr().out)
    assert all(set(row) == {"name", "kind", "distribution", "version"} for row in rows)
    expected = (
        {"name": "cross_attention", "kind": "attention type", "distribution": "canvas-engineering"}
        if builtin
        else {"name": "cli_attention", "kind": "attention type", "distribution": "(in-process)"}
    )
    assert any(expected.items() <= row.items() for row in rows), rows


def test_cli_plugins_table(fake_eps: list[FakeEntryPoint], capsys: pytest.CaptureFixture[str]) -> None:
    fake_eps.append(
        FakeEntryPoint("bb", "bb_mod", FakeDist("bb-dist", "1.2"), lambda: plugin_adding("register_backbones", "tiny"))
    )
    assert main(["plugins"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["kind", "name", "distribution", "version", "source"]
    assert row.split() == ["backbone", "tiny", "bb-dist", "1.2", "bb_mod"]
