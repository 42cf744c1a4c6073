"""The real install path: pip-install ``examples/third_party_plugin`` and use it from a fresh process.

Installs go to a ``--target`` folder under ``tmp_path`` with ``--no-deps --no-build-isolation
--no-index`` (offline); the checks run in a subprocess with that folder on ``PYTHONPATH`` so
``importlib.metadata`` discovers the distribution and its entry point exactly as in a user's
environment. The in-process tests at the end exercise ``talking_heads`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from canvas_engineering.plugin_host.host import (
    BLOCK_ENV,
    DISABLE_AUTOLOAD_ENV,
    STRICT_ENV,
    PluginLoadWarning,
    register_plugin,
    reset_plugins,
    unregister_plugin,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_plugin"
DIST = "canvas-engineering-example-plugin"

# Run inside the subprocess: list plugins through the CLI, declare and run a talking_heads edge.
CHECK = textwrap.dedent(
    """
    import contextlib, io, json
    from canvas_engineering.cli.commands import main
    from canvas_engineering.declare.topology import Connection

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["plugins", "--json"])
    result = {"rows": json.loads(out.getvalue())}
    result["fn"] = Connection("a", "a", fn="talking_heads").fn
    try:
        from canvas_engineering.attention.canvas_attention import CanvasAttention
    except ImportError:
        result["shape"] = None
    else:
        import torch
        from canvas_engineering import CanvasLayout, CanvasTopology

        layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 2, 0, 1), "b": (0, 2, 0, 2, 1, 2)})
        topology = CanvasTopology([Connection("a", "a", fn="talking_heads")])
        attn = CanvasAttention(layout, topology, d_model=16, n_heads=2)
        result["shape"] = list(attn(torch.randn(3, layout.num_positions, 16)).shape)
    print("RESULT " + json.dumps(result))
    """
)


def _copy(src: Path, dst: Path) -> Path:
    """Copy a project so the in-tree build leaves no build/ or egg-info in the repository."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return dst


def _pip_install(target: Path, *projects: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    cmd += ["--no-build-isolation", "--no-index", "--target", str(target), *map(str, projects)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"


def _run_check(site: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in {STRICT_ENV, BLOCK_ENV, DISABLE_AUTOLOAD_ENV}}
    full_env.update(PYTHONPATH=str(site), **env)
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=full_env, check=False)


def _result(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def _talking_heads_row(rows: list[dict]) -> dict:
    matches = [r for r in rows if r["name"] == "talking_heads"]
    assert len(matches) == 1, rows
    return matches[0]


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("example_plugin")
    _pip_install(root / "site", _copy(EXAMPLE, root / "src" / "example"))
    return root / "site"


@pytest.mark.slow
def test_installed_plugin_is_listed_and_usable(example_site: Path) -> None:
    result = _result(_run_check(example_site))
    row = _talking_heads_row(result["rows"])
    assert row == {
        "name": "talking_heads",
        "kind": "attention type",
        "distribution": DIST,
        "version": "0.1.0",
    }
    assert result["fn"] == "talking_heads"
    if result["shape"] is not None:
        assert result["shape"] == [3, 8, 16]


@pytest.mark.slow
def test_block_list_hides_installed_plugin(example_site: Path) -> None:
    done = _run_check(example_site, **{BLOCK_ENV: DIST})
    assert done.returncode != 0
    assert "unknown attention type 'talking_heads'" in done.stderr


@pytest.mark.slow
def test_broken_distribution_beside_good_one(tmp_path: Path) -> None:
    broken = tmp_path / "src" / "broken"
    (broken / "ce_broken_plugin").mkdir(parents=True)
    (broken / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=64"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "canvas-engineering-broken-plugin"
            version = "6.6.6"

            [project.entry-points.canvas_engineering]
            broken = "ce_broken_plugin"

            [tool.setuptools]
            packages = ["ce_broken_plugin"]
            """
        )
    )
    (broken / "ce_broken_plugin" / "__init__.py").write_text('raise ImportError("ce_broken_plugin needs libfoo")\n')
    site = tmp_path / "site"
    _pip_install(site, _copy(EXAMPLE, tmp_path / "src" / "example"), broken)

    done = _run_check(site)
    result = _result(done)
    assert "PluginLoadWarning" in done.stderr
    assert "canvas-engineering-broken-plugin 6.6.6 (entry point broken = ce_broken_plugin)" in done.stderr
    assert "ImportError: ce_broken_plugin needs libfoo" in done.stderr
    assert _talking_heads_row(result["rows"])["distribution"] == DIST
    assert result["fn"] == "talking_heads"

    strict = _run_check(site, **{STRICT_ENV: "1"})
    assert strict.returncode != 0
    assert "ce_broken_plugin needs libfoo" in strict.stderr


# -- talking_heads in-process ----------------------------------------------------------


@pytest.fixture
def talking_heads(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    pytest.importorskip("canvas_engineering.attention.canvas_attention")
    import ce_example_plugin

    reset_plugins()
    name = register_plugin(ce_example_plugin, name="example-in-process")
    try:
        yield ce_example_plugin
    finally:
        unregister_plugin(name)
        reset_plugins()


def test_talking_heads_respects_the_mask(talking_heads: object) -> None:
    from canvas_engineering import CanvasLayout, CanvasTopology, Connection
    from canvas_engineering.attention.canvas_attention import CanvasAttention

    torch.manual_seed(0)
    layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 2, 0, 1), "b": (0, 2, 0, 2, 1, 2)})
    # a's frame-t queries read only b's frame t
    topology = CanvasTopology([Connection("a", "b", t_src=0, t_dst=0, fn="talking_heads")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # other entry points may be mid-development
        attn = CanvasAttention(layout, topology, d_model=16, n_heads=4)
    (group,) = attn.groups
    op = group.op
    assert type(op).__name__ == "TalkingHeadsAttention"
    torch.testing.assert_close(op.head_mix.detach(), torch.eye(4))  # identity at init
    with torch.no_grad():
        op.head_mix.copy_(torch.randn(4, 4))  # heads now mix: masked logits must stay -inf

    x = torch.randn(2, layout.num_positions, 16)
    out = attn(x)
    assert out.shape == (2, layout.num_positions, 16)
    assert torch.isfinite(out).all()
    a_pos, b_pos = layout.region_indices("a"), layout.region_indices("b")
    assert (out[:, b_pos] == 0).all()  # b is nobody's query

    # perturbing b's frame-1 keys changes a's frame-1 outputs only
    frame = layout.position_frames
    b1 = b_pos[frame[b_pos] == 1]
    y = x.clone()
    y[:, b1] += 10 * torch.randn_like(y[:, b1])
    out_y = attn(y)
    a0, a1 = a_pos[frame[a_pos] == 0], a_pos[frame[a_pos] == 1]
    torch.testing.assert_close(out_y[:, a0], out[:, a0])
    assert not torch.allclose(out_y[:, a1], out[:, a1])


def test_talking_heads_identity_mix_is_plain_attention(talking_heads: object) -> None:
    from canvas_engineering import CanvasLayout, CanvasTopology, Connection
    from canvas_engineering.attention.canvas_attention import CanvasAttention

    torch.manual_seed(0)
    layout = CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 2, 0, 2)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        attn = CanvasAttention(layout, CanvasTopology([Connection("a", "a", fn="talking_heads")]), d_model=8, n_heads=2)
    op = attn.groups[0].op
    x = torch.randn(1, 4, 8)
    expected = torch.nn.functional.scaled_dot_product_attention(
        op._heads(op.q_proj(x)), op._heads(op.k_proj(x)), op._heads(op.v_proj(x))
    )  # (B, H, n, hd)
    expected = op.out_proj(expected.transpose(1, 2).reshape(1, 4, 8))
    torch.testing.assert_close(attn(x), expected)
