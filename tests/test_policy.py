"""CanvasPolicy, evaluate_policy and ``canvas-engineering rollout`` on a tiny CartPole-shaped canvas.

The model is trained for a few steps with a real Lightning Trainer on random windows (the
policy's mechanics do not need a good model, but an untrained adaLN-zero DiT ignores its input).
A spy on ``model.sample`` records the canvas batches the policy builds and the samples it reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
gym = pytest.importorskip("gymnasium")

from canvas_fixtures import NO_VAL_DATA  # noqa: E402

from canvas_engineering import CanvasPolicy, evaluate_policy  # noqa: E402
from canvas_engineering.errors import CanvasError, MissingDependencyError, PolicyError  # noqa: E402

pytestmark = NO_VAL_DATA  # the tiny models are fitted without validation data on purpose
T = 4
OBS_STD = [2.4, 2.0, 0.2095, 2.0]


def make_model(
    normalization: dict[str, Any] | None = None, seed: int = 0, t_current: int = 0, obs_output: bool = False
):
    """Obs (context) / action / reward, one position each per frame; causal in time; t_current 0."""
    from canvas_engineering import CanvasLayout, CanvasModule, CanvasSchema, CanvasTopology, RegionSpec

    torch.manual_seed(seed)
    layout = CanvasLayout(
        T=T, H=1, W=3, d_model=16, t_current=t_current,
        regions={
            "obs": RegionSpec((0, T, 0, 1, 0, 1), is_output=obs_output),
            "action": (0, T, 0, 1, 1, 2),
            "reward": (0, T, 0, 1, 2, 3),
        },
    )  # fmt: skip
    schema = CanvasSchema(layout, CanvasTopology.causal_temporal(list(layout.regions)))
    formats = {
        "obs": {"kind": "vector", "dim": 4},
        "action": {"kind": "action", "dim": 2},
        "reward": {"kind": "vector", "dim": 1},
    }
    return CanvasModule(
        schema, formats, backbone_config={"depth": 1, "n_heads": 2}, num_inference_steps=2, lr=1e-2,
        sample_metrics=False, normalization=normalization,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model after 6 Lightning steps on random windows, its pretrained folder and its checkpoint."""
    import lightning.pytorch as pl

    model = make_model(normalization={"obs": {"mean": [0.0] * 4, "std": OBS_STD}})
    g = torch.Generator().manual_seed(0)
    data = [
        {
            "obs": torch.randn(T, 4, generator=g),
            "action": torch.nn.functional.one_hot(torch.randint(2, (T,), generator=g), 2).float(),
            "reward": torch.randn(T, 1, generator=g),
        }
        for _ in range(16)
    ]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    folder = tmp_path_factory.mktemp("policy")
    ckpt = folder / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    model.save_pretrained(folder / "pretrained")
    return {"model": model.eval(), "pretrained": folder / "pretrained", "ckpt": ckpt}


class Spy:
    """Wrap ``model.sample``: record every batch given and every sample returned."""

    def __init__(self, model: Any) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        self.samples: list[dict[str, torch.Tensor]] = []
        self.model, self.original = model, model.sample

        def sample(batch, **kwargs):
            self.batches.append({k: v.clone() for k, v in batch.items()})
            out = self.original(batch, **kwargs)
            self.samples.append({k: v.clone() for k, v in out.items()})
            return out

        model.sample = sample

    def __enter__(self) -> Spy:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.sample  # back to the class's method


def test_top_level_exports() -> None:
    import canvas_engineering

    assert {"CanvasPolicy", "evaluate_policy", "PolicyEvaluation", "PolicyError"} <= set(canvas_engineering.__all__)
    assert issubclass(PolicyError, CanvasError) and issubclass(PolicyError, ValueError)


def test_act_returns_cartpole_actions_unbatched_and_batched(trained: dict[str, Any]) -> None:
    model = trained["model"]
    policy = CanvasPolicy(model, num_inference_steps=2)
    assert policy.observations == ("obs",) and policy.action == "action"
    action = policy.act({"obs": np.zeros(4)})
    assert action.shape == (2,) and action.dtype == torch.float32 and torch.isfinite(action).all()

    discrete = CanvasPolicy(model, num_inference_steps=2, action_space=gym.spaces.Discrete(2))
    one = discrete.act(np.array([0.01, 0.0, 0.05, 0.0]))  # a bare array: the one observed feature
    assert one in (0, 1)
    discrete.reset()
    many = discrete.act({"obs": torch.zeros(3, 4)})
    assert many.shape == (3,) and set(many.tolist()) <= {0, 1}
    with Spy(model) as spy:
        raw = CanvasPolicy(model, num_inference_steps=2).act({"obs": torch.zeros(3, 4)})
    # the env action is the argmax of the sampled one-hot at the current frame (frame 0 of a new episode)
    np.testing.assert_array_equal(gym.spaces.Discrete(2).contains(int(raw[0].argmax())), True)
    assert torch.equal(raw, spy.samples[0]["action"][:, 0])  # obs-only normalisation: actions as sampled


def test_rolling_window_grows_rolls_and_reset_clears(trained: dict[str, Any]) -> None:
    model = trained["model"]
    policy = CanvasPolicy(model, num_inference_steps=1)
    std = torch.tensor(OBS_STD)
    with Spy(model) as spy:
        for step in range(T + 2):
            policy.act({"obs": torch.full((4,), float(step + 1)) * std})  # normalised: all step + 1
        policy.reset()
        policy.act({"obs": torch.full((4,), 9.0) * std})
    windows = [b["obs"][0, :, 0] for b in spy.batches]  # (T,) first element per frame
    assert torch.allclose(windows[0], torch.tensor([1.0, 0, 0, 0]))  # current step at frame 0, future zero
    assert torch.allclose(windows[2], torch.tensor([1.0, 2, 3, 0]))
    assert torch.allclose(windows[3], torch.tensor([1.0, 2, 3, 4]))
    assert torch.allclose(windows[5], torch.tensor([3.0, 4, 5, 6]))  # rolled: the last T steps
    assert torch.allclose(windows[6], torch.tensor([9.0, 0, 0, 0]))  # reset: a new episode
    # past actions on the canvas are the ones returned (before denormalisation: none here)
    assert torch.equal(spy.batches[2]["action"][0, 0], spy.samples[0]["action"][0, 0])


def test_chunking_replans_every_execute_steps(trained: dict[str, Any]) -> None:
    model = trained["model"]
    policy = CanvasPolicy(model, chunk_size=3, execute_steps=2, num_inference_steps=1)
    actions = []
    with Spy(model) as spy:
        for step in range(6):
            actions.append(policy.act({"obs": torch.full((4,), 0.1 * step)}))
    assert len(spy.batches) == 3 == policy.samples_drawn  # steps 0, 2, 4 sample; 1, 3, 5 take the queue
    first = spy.samples[0]["action"][0]  # anchored at frame 0: actions of frames 0, 1, 2
    assert torch.equal(actions[0], first[0]) and torch.equal(actions[1], first[1])
    third = spy.samples[2]["action"][0]  # step 4: anchor clamped to T - chunk_size = 1
    assert torch.equal(actions[4], third[1]) and torch.equal(actions[5], third[2])
    assert torch.allclose(spy.batches[2]["obs"][0, :, 0], torch.tensor([0.3, 0.4, 0, 0]) / OBS_STD[0])
    with pytest.raises(PolicyError, match="chunk_size"):
        CanvasPolicy(model, chunk_size=T + 1)
    with pytest.raises(PolicyError, match="execute_steps"):
        CanvasPolicy(model, chunk_size=2, execute_steps=3)


def test_deterministic_mode_repeats_samples(trained: dict[str, Any]) -> None:
    model = trained["model"]
    obs = {"obs": torch.tensor([0.3, -0.2, 0.05, 0.4])}
    fixed = CanvasPolicy(model, deterministic=True, seed=3, num_inference_steps=2)
    a, b = fixed.imagine(obs, 2), fixed.imagine(obs, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    free = CanvasPolicy(model, seed=3, num_inference_steps=2)
    c, d = free.imagine(obs, 2), free.imagine(obs, 2)
    assert not torch.equal(c["reward"], d["reward"])  # the generator moved on
    free.reset()
    first = [free.act(obs) for _ in range(3)]
    free.reset()  # a full reset re-seeds: the episode repeats
    assert all(torch.equal(x, free.act(obs)) for x in first)


def test_batched_rows_reset_one_at_a_time(trained: dict[str, Any]) -> None:
    model = trained["model"]
    policy = CanvasPolicy(model, num_inference_steps=1)
    obs = lambda v: {"obs": torch.tensor([[v, 0, 0, 0], [v, 0, 0, 0]]) * torch.tensor(OBS_STD)}  # noqa: E731
    with Spy(model) as spy:
        policy.act(obs(1.0))
        policy.act(obs(2.0))
        policy.reset(env_ids=[1])
        policy.act(obs(3.0))
    window = spy.batches[-1]["obs"][:, :, 0]
    assert torch.allclose(window[0], torch.tensor([1.0, 2, 3, 0]))
    assert torch.allclose(window[1], torch.tensor([3.0, 0, 0, 0]))
    with pytest.raises(PolicyError, match="batch size 3 differs"):
        policy.act({"obs": torch.zeros(3, 4)})
    with pytest.raises(PolicyError, match="env_ids"):
        policy.reset(env_ids=[2])


def test_late_actions_pad_with_the_first_observation() -> None:
    """Actions predicted from frame 2 on: the current step sits at frame 2, earlier frames repeat the first step."""
    model = make_model(t_current=2)
    policy = CanvasPolicy(model, chunk_size=2, num_inference_steps=1)
    with Spy(model) as spy:
        for value in (1.0, 2.0, 3.0, 4.0):
            policy.act({"obs": torch.full((4,), value)})
    assert torch.allclose(spy.batches[0]["obs"][0, :, 0], torch.tensor([1.0, 1, 1, 0]))  # edge-padded, future 0
    assert torch.equal(spy.batches[0]["action"][0, :2], torch.zeros(2, 2))  # no action before the first step
    assert torch.allclose(spy.batches[1]["obs"][0, :, 0], torch.tensor([1.0, 2, 3, 0]))  # step 3 at frame 2
    with pytest.raises(PolicyError, match="chunk_size"):
        CanvasPolicy(model, chunk_size=3)  # only frames 2 and 3 are predicted
    world = make_model(t_current=2, obs_output=True)
    with pytest.raises(PolicyError, match="no context region to observe"):
        CanvasPolicy(world)
    assert CanvasPolicy(world, observations=["obs"]).observations == ("obs",)


def test_normalisation_applied_and_undone() -> None:
    model = make_model(
        normalization={
            "obs": {"mean": [1.0, 2, 3, 4], "std": [2.0, 2, 2, 2]},
            "action": {"mean": [10.0, -5], "std": [3.0, 0.5]},
        }
    )
    policy = CanvasPolicy(model, num_inference_steps=1)
    with Spy(model) as spy:
        out = policy.act({"obs": torch.tensor([3.0, 2, 1, 0])})
        policy.act({"obs": torch.tensor([3.0, 2, 1, 0])})
    assert torch.allclose(spy.batches[0]["obs"][0, 0], torch.tensor([1.0, 0, -1, -2]))  # (x - mean) / std
    sampled = spy.samples[0]["action"][0, 0]
    assert torch.allclose(out, sampled * torch.tensor([3.0, 0.5]) + torch.tensor([10.0, -5]))  # undone
    assert torch.allclose(spy.batches[1]["action"][0, 0], sampled)  # the history keeps model units


def test_imagine_returns_every_predicted_region_and_keeps_state(trained: dict[str, Any]) -> None:
    policy = CanvasPolicy(trained["model"], num_inference_steps=1)
    policy.act({"obs": torch.zeros(4)})
    future = policy.imagine({"obs": torch.zeros(4)}, 3)
    assert set(future) == {"action", "reward"}
    assert future["action"].shape == (3, 2) and future["reward"].shape == (3, 1)
    batched = CanvasPolicy(trained["model"], num_inference_steps=1).imagine({"obs": torch.zeros(2, 4)}, T)
    assert batched["action"].shape == (2, T, 2)
    assert int(policy._count[0]) == 1  # imagining did not add a step
    with pytest.raises(PolicyError, match="steps"):
        policy.imagine({"obs": torch.zeros(4)}, T + 1)


@pytest.mark.parametrize(
    ("observation", "pattern"),
    [
        ({"obs": np.zeros(4), "velocity": np.zeros(2)}, r"unknown feature 'velocity'.*'obs' \(4,\)"),
        ({"reward": np.zeros(1)}, r"missing feature 'obs' \(expected shape \(4,\)"),
        ({"obs": np.zeros(3)}, r"feature 'obs': expected shape \(4,\) or \(B, \*\(4,\)\), got \(3,\)"),
        ({"obs": np.zeros((2, 5))}, r"feature 'obs': expected shape \(4,\)"),
        ({"obs": np.zeros(4), "action": np.zeros(2)}, r"unknown feature 'action' \(the action region"),
        ({"obs": np.array([0.0, np.nan, 0, 0])}, "feature 'obs' holds NaN"),
        ({"obs": np.array(["a", "b", "c", "d"])}, "feature 'obs'"),
    ],
)
def test_bad_observations_raise_named_errors(trained: dict[str, Any], observation: Any, pattern: str) -> None:
    policy = CanvasPolicy(trained["model"], num_inference_steps=1)
    with pytest.raises(PolicyError, match=pattern):
        policy.act(observation)
    assert policy.samples_drawn == 0  # refused before the model ran


def test_bad_policy_arguments_raise_named_errors(trained: dict[str, Any]) -> None:
    model = trained["model"]
    with pytest.raises(PolicyError, match="action region 'grip' is not a fed region"):
        CanvasPolicy(model, action="grip")
    with pytest.raises(PolicyError, match="observation 'camera' is not a fed region"):
        CanvasPolicy(model, observations=["camera"])
    with pytest.raises(PolicyError, match="needs a CanvasModule"):
        CanvasPolicy(object())
    with pytest.raises(PolicyError, match="deterministic"):
        CanvasPolicy(model, deterministic=1)


def test_evaluate_policy_on_cartpole_writes_json_and_plot(trained: dict[str, Any], tmp_path: Path) -> None:
    policy = CanvasPolicy(trained["model"], num_inference_steps=1)
    result = evaluate_policy(
        policy, "CartPole-v1", episodes=2, seed=5, max_episode_steps=12, plot=tmp_path / "returns.png", progress=False
    )
    assert len(result.returns) == len(result.lengths) == 2
    assert all(1 <= n <= 12 for n in result.lengths)
    assert result.returns == [float(n) for n in result.lengths]  # CartPole: +1 per step
    assert result.mean == pytest.approx(np.mean(result.returns)) and result.std == pytest.approx(np.std(result.returns))
    assert Path(result.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(result.to_json(tmp_path / "eval.json").read_text())
    assert saved["returns"] == result.returns and saved["env_id"] == "CartPole-v1" and saved["seed"] == 5
    assert saved["mean"] == pytest.approx(result.mean) and saved["episodes"] == 2
    # the same seeds replay the same episodes (evaluate_policy resets the policy, which re-seeds its noise)
    again = evaluate_policy(policy, "CartPole-v1", episodes=2, seed=5, max_episode_steps=12, progress=False)
    assert again.returns == result.returns


class Frames(gym.Env):
    """A three-step env that renders numbered frames with NumPy (no pygame)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode, self.t = "rgb_array", 0

    def reset(self, *, seed: int | None = None, options: Any = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: Any):
        self.t += 1
        return np.zeros(4, np.float32), 1.0, self.t >= 3, False, {}

    def render(self) -> np.ndarray:
        return np.full((8, 8, 3), 40 * self.t, np.uint8)


def test_evaluate_policy_records_episodes(trained: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    policy = CanvasPolicy(trained["model"], num_inference_steps=1)
    result = evaluate_policy(policy, Frames(), episodes=2, video=tmp_path / "video", progress=False)
    assert result.returns == [3.0, 3.0]
    assert len(result.videos) == 1  # the first episode only (video_episodes=1)
    if not result.videos[0].endswith(".mp4"):  # no moviepy: PNG frames, the reset frame and one per step
        frames = sorted(Path(result.videos[0]).glob("frame-*.png"))
        assert [f.name for f in frames] == [f"frame-{i:05d}.png" for i in range(4)]
    with pytest.raises(PolicyError, match="num_envs"):
        evaluate_policy(policy, Frames(), episodes=2, num_envs=2)
    with pytest.raises(PolicyError, match="cannot be made"):
        evaluate_policy(policy, "NoSuchEnv-v0", episodes=1)


def test_video_of_cartpole_without_its_renderer_is_a_named_error(trained: dict[str, Any], tmp_path: Path) -> None:
    try:
        import pygame  # noqa: F401

        pytest.skip("pygame is installed: CartPole renders")
    except ImportError:
        pass
    policy = CanvasPolicy(trained["model"], num_inference_steps=1)
    with pytest.raises(MissingDependencyError, match="CartPole-v1.*pygame"):
        evaluate_policy(policy, "CartPole-v1", episodes=1, video=tmp_path / "v", progress=False)


def test_rollout_cli_from_pretrained_and_checkpoint(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from canvas_engineering.cli.commands import main

    out = tmp_path / "rollout.json"
    args = ["--env", "CartPole-v1", "--episodes", "2", "--max-episode-steps", "10", "--inference-steps", "1"]
    code = main(["rollout", "--pretrained", str(trained["pretrained"]), *args, "--output", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    saved = json.loads(out.read_text())
    assert len(saved["returns"]) == 2 and f"return {saved['mean']:.1f} ± {saved['std']:.1f}" in printed
    assert main(["rollout", "--ckpt", str(trained["ckpt"]), *args, "--no-progress"]) == 0
    assert "CartPole-v1: return" in capsys.readouterr().out
    assert main(["rollout", "--pretrained", str(tmp_path / "missing"), *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert (
        main(["rollout", "--pretrained", str(trained["pretrained"]), "--env", "CartPole-v1", "--chunk-size", "9"]) == 2
    )
    assert "chunk_size" in capsys.readouterr().err
