"""Fault injection, types at the edges: plugins registering an object of the wrong kind.

Every kind refuses, when ``registry.add`` is called, what it could not build later: an
attention type that is not a concrete ``AttentionType`` subclass, a backbone that is neither a
concrete ``CanvasBackbone`` class nor a factory, a datamodule that is not a concrete
``LightningDataModule`` subclass. An entry-point plugin doing so gets a ``PluginLoadWarning``
naming its distribution, entry point, the name and the rule, and that hook's registrations are
skipped (strict mode re-raises); in-process ``register_plugin`` raises
``PluginRegistrationError`` naming the plugin and the rule, and leaves nothing registered.
The kind checks come from the layers that define the kinds (the plugin host stays foundation).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from canvas_engineering.datamodules import BouncingBallsDataModule, CanvasDataModule
from canvas_engineering.plugins.attention.dot_product import CrossAttention
from canvas_engineering.plugins.backbones.canvas_dit import build_canvas_dit
from canvas_fixtures import FORMATS, TinyDataset, tiny_schema
from lightning.pytorch import LightningDataModule
from torch import nn

from canvas_engineering import CanvasAttention, CanvasBackbone, CanvasLayout, CanvasModule, CanvasTopology, Connection
from canvas_engineering.attention.attention_type import QKVAttentionType
from canvas_engineering.errors import (
    IncompatibleModelError,
    PluginLoadWarning,
    PluginRegistrationError,
    UnknownAttentionTypeError,
)
from canvas_engineering.plugin_host.host import STRICT_ENV, PluginHost, get_registry, hookimpl
from canvas_engineering.plugin_host.registry import KindRegistry, kind_check

GROUP = "canvas_engineering_fault_tests"
REPO = Path(__file__).resolve().parents[1]


def make_attention(d_model: int, n_heads: int) -> nn.Module:
    """A factory function: fine for a backbone, the wrong kind for an attention type."""
    return CrossAttention(d_model=d_model, n_heads=n_heads)


class PlainModule(nn.Module):
    """An nn.Module that is neither an attention type nor a backbone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class EmptyDataModule(LightningDataModule):
    """A concrete LightningDataModule (the right kind)."""


HOOKS = {
    "attention type": "register_attention_types",
    "backbone": "register_backbones",
    "datamodule": "register_datamodules",
}
ATTRIBUTES = {"attention type": "attention_types", "backbone": "backbones", "datamodule": "datamodules"}
#: kind -> an object of that kind (registered beside the wrong one)
GOOD: dict[str, Any] = {"attention type": CrossAttention, "backbone": build_canvas_dit, "datamodule": EmptyDataModule}

# (kind, id, wrong object, fragment of the rule the refusal states)
WRONG = [
    ("attention type", "function", make_attention, "got the function test_faults_plugins.make_attention"),
    (
        "attention type",
        "instance",
        CrossAttention(d_model=8, n_heads=2),
        "got an instance of canvas_engineering.plugins",
    ),
    ("attention type", "abstract", QKVAttentionType, "which is abstract (does not implement forward)"),
    ("attention type", "other-module", PlainModule, "which does not derive from canvas_engineering.AttentionType"),
    ("attention type", "dotted-string", "pkg.mod:Attention", "got an instance of builtins.str ('pkg.mod:Attention')"),
    ("backbone", "built-module", PlainModule(), "an already built module (register its class or a factory)"),
    ("backbone", "not-callable", 42, "got an instance of builtins.int (42), which is not callable"),
    ("backbone", "other-module", PlainModule, "which does not derive from canvas_engineering.CanvasBackbone"),
    ("backbone", "abstract", CanvasBackbone, "which is abstract (does not implement forward)"),
    ("backbone", "attention-type", CrossAttention, "which does not derive from canvas_engineering.CanvasBackbone"),
    ("datamodule", "function", make_attention, "must be a concrete subclass of lightning.pytorch.LightningDataModule"),
    ("datamodule", "dataset", TinyDataset, "which does not derive from lightning.pytorch.LightningDataModule"),
    ("datamodule", "abstract", CanvasDataModule, "which is abstract"),
    ("datamodule", "instance", EmptyDataModule(), "got an instance of test_faults_plugins.EmptyDataModule"),
]
IDS = [f"{kind.replace(' ', '-')}-{case}" for kind, case, _, _ in WRONG]


def plugin_adding(kind: str, entries: list[tuple[str, Any]]) -> object:
    """A plugin object whose hook for ``kind`` adds ``entries`` in order."""

    class Plugin:
        pass

    def impl(registry: KindRegistry) -> None:
        for name, obj in entries:
            registry.add(name, obj)

    impl.__name__ = HOOKS[kind]
    setattr(Plugin, HOOKS[kind], staticmethod(hookimpl(impl)))
    return Plugin()


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version, self.metadata = name, version, {"Name": name}


class FakeEntryPoint:
    group = GROUP

    def __init__(self, name: str, dist: FakeDist, load: Callable[[], object]) -> None:
        self.name, self.value, self.dist, self._load = name, f"{name}_mod", dist, load

    def load(self) -> object:
        return self._load()


@pytest.fixture
def fault_eps(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    """Entry points of the test group (every other group is the real one)."""
    eps: list[FakeEntryPoint] = []
    real = importlib.metadata.entry_points

    def entry_points(**params: object) -> Any:
        return list(eps) if params.get("group") == GROUP else real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.delenv(STRICT_ENV, raising=False)
    return eps


def _wrong_and_fine(eps: list[FakeEntryPoint], kind: str, wrong: Any) -> None:
    """A distribution adding a good object then ``wrong``, and another adding a good one."""
    entries = [("good_first", GOOD[kind]), ("bad_x", wrong)]
    eps.append(FakeEntryPoint("wrong", FakeDist("wrong-kind-dist", "6.6"), lambda: plugin_adding(kind, entries)))
    eps.append(
        FakeEntryPoint("fine", FakeDist("fine-dist", "1.0"), lambda: plugin_adding(kind, [("fine_x", GOOD[kind])]))
    )


def _kind(host: PluginHost, kind: str) -> KindRegistry:
    """The (filled) registry of ``kind`` in ``host``."""
    return getattr(host.registry(), ATTRIBUTES[kind])


# -- entry-point plugins: warned, named, skipped ------------------------------------------------


@pytest.mark.parametrize(("kind", "case", "wrong", "rule"), WRONG, ids=IDS)
def test_entry_point_registering_the_wrong_kind_is_warned_and_skipped(
    fault_eps: list[FakeEntryPoint], kind: str, case: str, wrong: Any, rule: str
) -> None:
    _wrong_and_fine(fault_eps, kind, wrong)
    host = PluginHost(group=GROUP)
    with pytest.warns(PluginLoadWarning) as record:
        registry_kind = _kind(host, kind)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    msg = messages[0]
    assert (
        f"hook {HOOKS[kind]} of wrong-kind-dist 6.6 (entry point wrong = wrong_mod) raised PluginRegistrationError"
        in msg
    )
    assert f"{kind} 'bad_x' from wrong-kind-dist 6.6 (entry point wrong = wrong_mod) is refused: it must be" in msg
    assert rule in msg
    assert "Its registrations were skipped" in msg
    # the hook is skipped as a whole (its good entry too); the other distribution still loads
    assert registry_kind.names() == ["fine_x"]
    assert registry_kind["fine_x"].distribution == "fine-dist"


@pytest.mark.parametrize(
    ("kind", "case", "wrong", "rule"), WRONG[:1] + WRONG[5:6] + WRONG[10:11], ids=IDS[:1] + IDS[5:6] + IDS[10:11]
)
def test_strict_mode_raises_the_refusal(
    fault_eps: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch, kind: str, case: str, wrong: Any, rule: str
) -> None:
    _wrong_and_fine(fault_eps, kind, wrong)
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginRegistrationError, match=r"'bad_x' from wrong-kind-dist 6\.6 .* is refused") as err:
        _kind(PluginHost(group=GROUP), kind)
    assert rule in str(err.value)


def test_a_refused_attention_type_is_not_installed_rather_than_failing_when_built(
    fault_eps: list[FakeEntryPoint],
) -> None:
    # declared vocabulary names, so connections may name them; only the registry decides what runs
    wrong = [("linear_attention", make_attention)]
    fault_eps.append(
        FakeEntryPoint("wrong", FakeDist("wrong-kind-dist", "6.6"), lambda: plugin_adding("attention type", wrong))
    )
    fine = [("cross_attention", CrossAttention)]
    fault_eps.append(
        FakeEntryPoint("fine", FakeDist("fine-dist", "1.0"), lambda: plugin_adding("attention type", fine))
    )
    host = PluginHost(group=GROUP)
    with pytest.warns(PluginLoadWarning, match=r"attention type 'linear_attention' from wrong-kind-dist 6\.6"):
        assert host.registry().attention_types.names() == ["cross_attention"]
    layout = CanvasLayout(T=1, H=1, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 1), "b": (0, 1, 0, 1, 1, 2)})
    good = CanvasTopology([Connection("a", "b", fn="cross_attention")])
    assert CanvasAttention(layout, good, n_heads=2, registry=host.registry())(torch.randn(1, 2, 8)).shape == (1, 2, 8)
    bad = CanvasTopology([Connection("a", "b", fn="linear_attention")])
    with pytest.raises(
        UnknownAttentionTypeError, match="'linear_attention' is not installed; installed types: cross_attention"
    ):
        CanvasAttention(layout, bad, n_heads=2, registry=host.registry())


# -- in-process plugins: refused by register_plugin ------------------------------------------------


@pytest.mark.parametrize(("kind", "case", "wrong", "rule"), WRONG, ids=IDS)
def test_in_process_registration_of_the_wrong_kind_raises(kind: str, case: str, wrong: Any, rule: str) -> None:
    host = PluginHost(load_entry_points=False)
    plugin = plugin_adding(kind, [("good_first", GOOD[kind]), ("bad_x", wrong)])
    with pytest.raises(PluginRegistrationError) as err:
        host.register(plugin, name="wrong-inproc")
    msg = str(err.value)
    assert msg.startswith(f"{kind} 'bad_x' from (in-process) (plugin 'wrong-inproc') is refused: it must be")
    assert rule in msg
    # nothing of it stays: the name is free again and the registry never sees it
    assert _kind(host, kind).names() == []
    host.register(plugin_adding(kind, [("good_first", GOOD[kind])]), name="wrong-inproc")
    assert _kind(host, kind).names() == ["good_first"]


@pytest.mark.parametrize(("kind", "case", "wrong", "rule"), WRONG, ids=IDS)
def test_kind_registry_add_refuses_the_wrong_kind(kind: str, case: str, wrong: Any, rule: str) -> None:
    registry = KindRegistry(kind)
    with pytest.raises(
        PluginRegistrationError, match=rf"^{kind} 'x' from \(in-process\) \(plugin 'direct registry\.add'\)"
    ):
        registry.add("x", wrong)
    assert registry.names() == []
    registry.add("x", GOOD[kind])
    assert registry["x"].obj is GOOD[kind]


def test_installed_plugins_are_each_of_their_kind() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # other entry points may be mid-development
        registry = get_registry()
        kinds = registry.kinds()
    assert "cross_attention" in registry.attention_types and "canvas_dit" in registry.backbones
    assert registry.datamodules["bouncing_balls"].obj is BouncingBallsDataModule
    for kind in kinds:
        check = kind_check(kind.kind)
        assert check is not None
        assert [e.name for e in kind.entries() if check(e.obj) is not None] == []


def test_each_kind_check_comes_from_the_layer_defining_the_kind() -> None:
    modules = {kind: kind_check(kind).__module__ for kind in HOOKS}
    assert modules == {
        "attention type": "canvas_engineering.attention.attention_type",
        "backbone": "canvas_engineering.models.backbone",
        "datamodule": "canvas_engineering.plugin_host.registry",  # Lightning's class, imported only when checked
    }


def test_checks_are_installed_whichever_module_is_imported_first() -> None:
    code = textwrap.dedent(
        """
        from canvas_engineering.plugin_host.registry import KindRegistry
        from canvas_engineering.errors import PluginRegistrationError
        refused = []
        for kind in ("attention type", "backbone", "datamodule"):
            try:
                KindRegistry(kind).add("x", 42)
            except PluginRegistrationError:
                refused.append(kind)
        print(refused)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != STRICT_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['attention type', 'backbone', 'datamodule']"


# -- a backbone factory returning the wrong thing ----------------------------------------------------


def test_backbone_factory_returning_no_module_names_the_backbone_and_its_plugin() -> None:
    host = PluginHost(load_entry_points=False)

    def build_nothing(layout: object, topology: object, **config: object) -> str:
        return "not a module"

    host.register(plugin_adding("backbone", [("hollow", build_nothing)]), name="hollow-plugin")
    with pytest.raises(IncompatibleModelError, match=r"backbone 'hollow' from \(in-process\) \(hollow-plugin\): its "
                       r"factory returned str, not an nn\.Module"):  # fmt: skip
        CanvasModule(tiny_schema(), FORMATS, backbone="hollow", registry=host.registry())


# -- a real pip-installed distribution registering the wrong kind ---------------------------------------


@pytest.mark.slow
def test_installed_distribution_registering_the_wrong_kind(tmp_path: Path) -> None:
    project = tmp_path / "src" / "wrong"
    (project / "ce_wrong_kind").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=64"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "canvas-engineering-wrong-kind"
            version = "0.2"

            [project.entry-points.canvas_engineering]
            wrong = "ce_wrong_kind"

            [tool.setuptools]
            packages = ["ce_wrong_kind"]
            """
        )
    )
    (project / "ce_wrong_kind" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from canvas_engineering import hookimpl

            def spiky_attention(d_model, n_heads):
                raise AssertionError("never built")

            @hookimpl
            def register_attention_types(registry):
                registry.add("spiky", spiky_attention)
            """
        )
    )
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    cmd += ["--no-build-isolation", "--no-index", "--target", str(site), str(project)]
    installed = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert installed.returncode == 0, installed.stderr
    shutil.rmtree(project / "build", ignore_errors=True)

    check = "from canvas_engineering.cli.commands import main; main(['plugins', '--json'])"
    env = {k: v for k, v in os.environ.items() if k != STRICT_ENV}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "PluginLoadWarning" in done.stderr
    assert "canvas-engineering-wrong-kind 0.2 (entry point wrong = ce_wrong_kind)" in done.stderr
    assert "attention type 'spiky'" in done.stderr
    assert "got the function ce_wrong_kind.spiky_attention" in done.stderr
    assert '"spiky"' not in done.stdout and '"cross_attention"' in done.stdout  # skipped; the built-ins load

    env[STRICT_ENV] = "1"
    strict = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=False)
    assert strict.returncode != 0
    assert "PluginRegistrationError" in strict.stderr and "ce_wrong_kind.spiky_attention" in strict.stderr
