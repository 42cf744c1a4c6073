"""The runnable examples and the looping benchmark at ``--quick`` size, and the benchmark's statistics.

Each example's ``main(["--quick", "--out", DIR])`` runs in this process; the tests check the
numbers it returns are finite and its PNG figures exist. The looping benchmark runs with two
seeds and loops 1-2 only (its numbers are meaningless at that size); its Welch test and
parameter-efficiency interpolation are checked against reference values.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("lightning")
pytest.importorskip("matplotlib")


def load(folder: str, name: str) -> ModuleType:
    """Import ``folder/name.py`` by path (examples and benchmarks each have their own ``_common``)."""
    sys.modules.pop("_common", None)  # the module binds its own folder's helpers at import
    spec = importlib.util.spec_from_file_location(f"_{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    sys.modules.pop("_common", None)
    return module


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The examples quieten Lightning's loggers; put their levels back afterwards."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def check_figures(figures: dict[str, str], out: Path, expected: set[str]) -> None:
    assert expected <= set(figures), f"missing figures: {expected - set(figures)}"
    for path in figures.values():
        path = Path(path)
        assert path.parent == out
        assert path.suffix == ".png"
        assert path.stat().st_size > 1024, f"{path} is only {path.stat().st_size} bytes"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_multi_frequency_fusion_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = load("examples", "multi_frequency_fusion").main(["--quick", "--out", str(tmp_path)])
    for alloc in ("bandwidth", "flat"):
        mse = result[alloc]["mse"]
        assert set(mse) == {"fast", "medium", "slow", "mean"}
        assert finite(*mse.values(), *result[alloc]["sample_mse"].values(), result[alloc]["val_loss"])
        assert result[alloc]["positions"] == 48  # the same canvas size
    assert result["bandwidth"]["tokens"] == 16 + 8 + 4
    assert result["flat"]["tokens"] == 3 * 16
    assert finite(*result["zero_mse"].values(), *result["linear_mse"].values())
    check_figures(result["figures"], tmp_path, {"results", "predictions", "layout_bandwidth", "layout_flat"})
    printed = capsys.readouterr().out
    assert "bandwidth" in printed and "flat" in printed and "results.png" in printed


@pytest.mark.slow
def test_cartpole_control_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gymnasium")
    result = load("examples", "cartpole_control").main(["--quick", "--out", str(tmp_path)])
    assert 0.0 <= result["accuracy"] <= 1.0
    assert 0.0 <= result["expert_agreement"] <= 1.0
    assert finite(result["learned_return"], result["random_return"], result["heuristic_return"])
    assert result["learned_return"] >= 1.0 and result["random_return"] >= 1.0  # every episode lasts a step
    assert len(result["returns"]["learned"]) == len(result["returns"]["random"]) == 2
    assert finite(*result["plan_explained"], *result["plan_angle_corr"])
    check_figures(result["figures"], tmp_path, {"plan_pca", "returns", "layout", "attention_mask"})
    assert "episode return" in capsys.readouterr().out


def test_cartpole_plan_schema_wiring() -> None:
    """The plan region is latent (no format), observations are context, and no query sees a later frame."""
    pytest.importorskip("gymnasium")
    example = load("examples", "cartpole_control")
    from canvas_engineering.datamodules import CartPoleDataModule

    dm = CartPoleDataModule(t_current=0, n_train=4, n_val=4, n_test=4)
    schema = example.plan_schema(dm)
    layout = schema.layout
    assert "plan" in layout.regions and "plan" not in dm.region_formats
    assert not layout.regions["obs"].is_output
    mask = schema.topology.to_attention_mask(layout) > 0
    frames = layout.position_frames
    assert not (mask & (frames[None, :] > frames[:, None])).any()  # causal
    action, obs = layout.region_indices("action"), layout.region_indices("obs")
    assert mask[action][:, obs][range(layout.T), range(layout.T)].all()  # the action reads its frame's obs


@pytest.mark.slow
def test_hello_canvas_types_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = load("examples", "hello_canvas_types").main(["--quick", "--out", str(tmp_path)])
    assert finite(result["val_loss"], *result["val"].values())
    assert result["fields"] == ["camera", "push", "reward", "thought"]
    check_figures(result["figures"], tmp_path, {"layout", "attention_mask", "camera"})
    assert "BoundSchema" in capsys.readouterr().out


# -- the looping benchmark's statistics ------------------------------------------------------


@pytest.fixture(scope="module")
def looping() -> ModuleType:
    return load("benchmarks", "looping")


def test_welch_p_matches_reference_values(looping: ModuleType) -> None:
    # Welch p-values (the first is scipy.stats.ttest_ind(equal_var=False) of these samples)
    assert looping.welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.021311641128756727, rel=1e-6)
    assert looping.welch_p([0.1, 0.12, 0.11, 0.13], [0.1, 0.2, 0.15]) == pytest.approx(0.348722987875, rel=1e-6)  # checked by integrating the t density
    assert looping.welch_p([1, 1, 1], [1, 1, 1]) == 1.0
    # the two-sided 5% point of Student's t with 4 degrees of freedom is 2.776
    assert looping.betainc(2.0, 0.5, 4 / (4 + 2.7764451051977987**2)) == pytest.approx(0.05, rel=1e-6)


def test_params_to_reach_interpolates_log_linearly(looping: ModuleType) -> None:
    curve = [(100, 1.0), (200, 0.8), (400, 0.7)]
    params, where = looping.params_to_reach(0.9, curve)
    assert where == "" and params == pytest.approx(100 * 2**0.5)
    assert looping.params_to_reach(0.75, curve)[0] == pytest.approx(200 * 2**0.5)
    assert looping.params_to_reach(1.1, curve) == (None, "below")
    assert looping.params_to_reach(0.5, curve) == (None, "above")


@pytest.mark.slow
def test_looping_benchmark_quick(looping: ModuleType, tmp_path: Path) -> None:
    """The whole benchmark at tiny size (numbers meaningless): every condition and seed runs and is reported."""
    out = tmp_path / "looping.json"
    result = looping.main(["--quick", "--seeds", "2", "--jobs", "1", "--out", str(out)])
    names = {c["name"] for c in result["conditions"]}
    assert names == {"looped-1", "looped-2", "deep-2", "thin-2"}
    assert len(result["runs"]) == 2 * len(names)
    assert all(finite(r["val_loss"]) for r in result["runs"])
    thin, looped = (next(c for c in result["conditions"] if c["name"] == n) for n in ("thin-2", "looped-2"))
    assert thin["depth"] == 2 * looped["depth"] and thin["width"] < looped["width"]
    assert abs(thin["params"] - looped["params"]) / looped["params"] < 0.15  # matched parameter count
    assert set(result["p"]["looped-2"]) == {"thin", "looped-1", "deep"}
    again = looping.main(["--from-json", str(out)])  # re-renders the saved run without training
    assert again["runs"] == result["runs"]
