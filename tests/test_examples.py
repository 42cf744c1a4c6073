"""The runnable examples and the looping benchmark at ``--quick`` size, and the benchmark's statistics.

Each example's ``main(["--quick", "--out", DIR])`` runs in this process; the tests check the
numbers it returns are finite and its PNG figures exist. The looping benchmark runs with two
seeds, loops 1-2 and every freeze level (its numbers are meaningless at that size); its
confidence intervals and Welch p-values are checked against reference values, and its freeze
levels against the parameters they must leave trainable.
"""

from __future__ import annotations

import importlib.util
import json
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
    # played through CanvasPolicy / evaluate_policy: the learned returns as JSON, the model as a pretrained folder
    saved = json.loads((tmp_path / "learned_returns.json").read_text())
    assert saved["returns"] == result["returns"]["learned"] and saved["env_id"] == "CartPole-v1"
    assert (Path(result["pretrained"]) / "model.safetensors").is_file()


def test_episodes_to_canvas_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gymnasium")
    pytest.importorskip("pyarrow")
    result = load("examples", "episodes_to_canvas").main(["--quick", "--out", str(tmp_path)])
    root = Path(result["root"])
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50
    assert list((root / "videos" / "observation.images.top").rglob("*.mp4"))
    assert finite(result["metrics"]["test/loss"], *result["mse"]["observation.state"])
    assert "held-out episodes" in capsys.readouterr().out


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


def test_looping_mean_ci_is_the_student_t_interval(looping: ModuleType) -> None:
    import statistics

    from scipy.stats import t

    values = [0.011, 0.013, 0.012, 0.016, 0.010]
    mean, lo, hi = looping.mean_ci(values)
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5  # by hand
    assert mean == pytest.approx(statistics.fmean(values))
    assert (lo, hi) == (pytest.approx(mean - half), pytest.approx(mean + half))
    # [1..5]: mean 3, standard error sqrt(2.5 / 5), t(0.975, 4) = 2.7764451051977987
    half = 2.7764451051977987 * 0.5**0.5
    assert looping.mean_ci([1, 2, 3, 4, 5]) == pytest.approx((3.0, 3 - half, 3 + half))
    assert looping.mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # no spread: a point interval
    mean, lo, hi = looping.mean_ci([4.0])
    assert mean == 4.0 and math.isnan(lo) and math.isnan(hi)


def test_looping_welch_p_matches_reference_values(looping: ModuleType) -> None:
    # two-sided Welch t-test p-values (scipy.stats.ttest_ind(equal_var=False); the second also
    # checked by integrating the t density)
    assert looping.welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.021311641128756727, rel=1e-6)
    assert looping.welch_p([0.1, 0.12, 0.11, 0.13], [0.1, 0.2, 0.15]) == pytest.approx(0.348722987875, rel=1e-6)
    assert looping.welch_p([1, 1, 1], [1, 1, 1]) == 1.0  # no spread anywhere: scipy says nan
    assert looping.welch_p([1, 1, 1], [2, 2, 2]) == 0.0
    assert math.isnan(looping.welch_p([1.0], [1.0, 2.0]))


def test_looping_freeze_levels_train_the_right_parameters(looping: ModuleType) -> None:
    """``full``: loop embeddings only; ``half``: all but the first half of the blocks (their loop embeddings train)."""
    cfg = dict(looping.QUICK)
    job = {"cfg": cfg, "seed": 0, "study": "freeze", "depth": 4, "max_loops": 3}
    _, model = looping.build(job)
    names = {n for n, _ in model.named_parameters()}
    loop = {n for n in names if n.endswith(".loop_embeddings")}
    assert len(loop) == 4 and all(looping.is_loop_parameter(n) for n in loop)
    looping.apply_freeze(model, "full")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == loop
    looping.apply_freeze(model, "half")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.blocks.0.", "backbone.blocks.1.")) for n in frozen)
    assert {n for n in names if n.startswith(("backbone.blocks.0.block.", "backbone.blocks.1.block."))} == frozen
    looping.apply_freeze(model, "none")
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_looping_benchmark_quick(looping: ModuleType, tmp_path: Path) -> None:
    """The whole benchmark at tiny size (numbers meaningless): every condition and seed runs and is reported."""
    out = tmp_path / "looping.json"
    result = looping.main(["--quick", "--seeds", "2", "--jobs", "1", "--out", str(out)])
    names = {"loops-1", "loops-2", "pretrained", "freeze-full", "freeze-half", "freeze-none", "pretrained-1loop",
             "long-1", "long-2"}
    assert {r["condition"] for r in result["runs"]} == names
    assert sorted(r["seed"] for r in result["runs"]) == [0] * len(names) + [1] * len(names)
    assert all(finite(r["video_mse"], *r["metrics"].values()) for r in result["runs"])
    for r in result["runs"]:
        assert r["video_mse"] == r["metrics"]["val/sample/video/mse"]
        for key in ("baseline/last/video", "baseline/mean/video", "baseline/constant_velocity/video", "sample/reward",
                    "sample/action"):
            assert f"val/{key}/mse" in r["metrics"]
    long = next(r for r in result["runs"] if r["condition"] == "long-2")
    assert {f"val/sample/video/mse/frame_{t}" for t in range(4, 12)} <= set(long["metrics"])
    params = {r["condition"]: r["trainable_params"] for r in result["runs"] if r["seed"] == 0}
    assert params["freeze-full"] < params["freeze-half"] < params["freeze-none"] == params["pretrained-1loop"]
    summary = result["summary"]
    assert math.isnan(summary["loops-1"]["p"] or math.nan) and 0.0 <= summary["loops-2"]["p"] <= 1.0
    assert summary["loops-2"]["ci"][0] <= summary["loops-2"]["mean"] <= summary["loops-2"]["ci"][1]
    assert set(summary["long-2"]["per_frame"]["sample"]) == set(range(4, 12))
    again = looping.main(["--from-json", str(out)])  # re-renders the saved run without training
    assert again["runs"] == result["runs"]
    # --merge: runs saved by separate commands (one per study) become one result and one README section
    saved = json.loads(out.read_text())
    parts = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, studies in zip(parts, (["loops"], ["freeze", "long"]), strict=True):
        part = {**saved, "studies": studies, "runs": [r for r in saved["runs"] if r["study"] in studies]}
        path.write_text(json.dumps(part))
    merged = looping.main(["--merge", *map(str, parts), "--out", str(tmp_path / "merged.json")])
    assert sorted((r["condition"], r["seed"]) for r in merged["runs"]) == sorted(
        (r["condition"], r["seed"]) for r in result["runs"]
    )
    assert len(merged["commands"]) == 2 and "--studies freeze,long" in merged["commands"][1]
    text, _ = looping.summarise(merged)
    assert "**Freeze levels**" in text and "**Long horizon**" in text and "Commands" in text
    # a run of one condition without its reference (e.g. --loops 3 alone) still renders
    alone = {**saved, "studies": ["loops"], "runs": [r for r in saved["runs"] if r["condition"] == "loops-2"]}
    assert "| loops-2 |" in looping.summarise(alone)[0]


# -- the recipe ablation -------------------------------------------------------------------------


@pytest.mark.slow
def test_recipe_ablation_quick_run_scores_samples_against_baselines(tmp_path: Path) -> None:
    recipe = load("benchmarks", "recipe")
    result = recipe.main(["--quick", "--jobs", "1", "--out", str(tmp_path / "recipe.json")])
    assert {r["name"] for r in result["runs"]} == {recipe.CHOSEN, "before"}
    for run in result["runs"]:
        summary = recipe.summarise(run)
        assert all(math.isfinite(summary[k]) for k in ("video", "action", "reward", "ssim"))
        assert 0 <= summary["wins"] <= 12
    text = recipe.render(result)
    assert "baseline: constant_velocity" in text and recipe.CHOSEN in text
    assert json.loads((tmp_path / "recipe.json").read_text())["steps"] == 4
