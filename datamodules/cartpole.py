"""``CartPoleDataModule``: windows of gymnasium ``CartPole-v1`` rollouts (no rendering).

Episodes are played by a seeded mix of a heuristic policy (push the cart towards the side
the pole leans to, counting its angular velocity) and uniformly random actions, then cut
into windows of ``frames`` consecutive steps. Windows are aligned to the end of each
episode, so every episode that ends with the pole falling yields a window whose last step is
the failure.

Per step ``t`` of a window: ``obs[t]`` is the observation the action was chosen from (cart
position, cart velocity, pole angle, pole angular velocity; divided by
:data:`OBS_SCALE` when ``normalize``), ``action[t]`` the chosen action as a one-hot
``[left, right]``, ``reward[t]`` the reward it earned.

Needs gymnasium (``pip install 'canvas-engineering[data]'``), imported when data is built.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from canvas_engineering.datamodules.base import CanvasDataModule, Split, TensorDictDataset, TopologyKind, split_rng

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.errors import CanvasValidationError, MissingDependencyError
from canvas_engineering.models.region_codecs import RegionFormat

__all__ = ["OBS_SCALE", "CartPoleDataModule", "collect_cartpole_windows", "heuristic_action"]

#: typical magnitude of each observation (x, x_dot, theta, theta_dot); ``normalize`` divides by it
OBS_SCALE = np.array([2.4, 2.0, 0.2095, 2.0])


def heuristic_action(obs: np.ndarray) -> int:
    """Push towards the pole's lean: right (1) if ``theta + 0.5 * theta_dot > 0``, else left (0)."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def _make_env(max_episode_steps: int, reward_mode: str):
    try:
        import gymnasium as gym
    except ImportError as err:
        msg = "CartPoleDataModule needs gymnasium: pip install 'canvas-engineering[data]'"
        raise MissingDependencyError(msg) from err
    return gym.make("CartPole-v1", max_episode_steps=max_episode_steps, sutton_barto_reward=reward_mode == "failure")


def collect_cartpole_windows(
    rng: np.random.Generator,
    n: int,
    *,
    frames: int,
    random_action_prob: float,
    max_episode_steps: int,
    reward_mode: Literal["failure", "survival"],
    normalize: bool,
) -> dict[str, torch.Tensor]:
    """Play seeded episodes until ``n`` windows are cut.

    Returns ``obs (n, frames, 4)``, ``action (n, frames, 2)`` (one-hot) and ``reward (n, frames, 1)``.
    Episodes shorter than ``frames`` are dropped.
    """
    env = _make_env(max_episode_steps, reward_mode)
    obs_w, act_w, rew_w = [], [], []
    try:
        while len(obs_w) < n:
            obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
            observations, actions, rewards = [], [], []
            done = False
            while not done:
                if rng.random() < random_action_prob:
                    action = int(rng.integers(2))
                else:
                    action = heuristic_action(obs)
                observations.append(obs)
                actions.append(action)
                obs, reward, terminated, truncated, _ = env.step(action)
                rewards.append(float(reward))
                done = terminated or truncated
            length = len(actions)
            # windows aligned to the episode's end: [L - frames, L), [L - 2 frames, L - frames), ...
            for end in range(length, frames - 1, -frames):
                obs_w.append(np.asarray(observations[end - frames : end]))
                act_w.append(np.asarray(actions[end - frames : end]))
                rew_w.append(np.asarray(rewards[end - frames : end]))
    finally:
        env.close()
    order = rng.permutation(len(obs_w))[:n]  # mix episodes; keep n windows
    observations = np.stack([obs_w[i] for i in order]).astype(np.float64)  # (n, frames, 4)
    if normalize:
        observations = observations / OBS_SCALE
    actions = np.stack([act_w[i] for i in order])  # (n, frames)
    rewards = np.stack([rew_w[i] for i in order])  # (n, frames)
    return {
        "obs": torch.from_numpy(observations).float(),
        "action": torch.nn.functional.one_hot(torch.from_numpy(actions).long(), 2).float(),  # (n, frames, 2)
        "reward": torch.from_numpy(rewards[..., None]).float(),  # (n, frames, 1)
    }


class CartPoleDataModule(CanvasDataModule):
    """Windows of CartPole-v1 rollouts: observation, one-hot action and reward per step.

    Canvas (defaults): ``T=8``, ``H=1``, ``W=3``: one position per step for each of ``obs``,
    ``action`` and ``reward``; ``t_current=4``; causal-temporal topology (HOLD fill).

    Batch (defaults, ``B = batch_size``)::

        obs     (B, 8, 4)  -> region "obs"    (vector, dim=4)
        action  (B, 8, 2)  -> region "action" (action, dim=2): one-hot [left, right]
        reward  (B, 8, 1)  -> region "reward" (vector, dim=1)

    Args:
        frames: steps per window (canvas ``T``, >= 2).
        random_action_prob: probability of a uniformly random action at each step, in [0, 1].
        max_episode_steps: episode length limit (>= ``frames``).
        reward_mode: ``"failure"``: 0 per step and -1 on the step the pole falls (gymnasium's
            ``sutton_barto_reward``); ``"survival"``: +1 per step (gymnasium's default).
        normalize: divide observations by :data:`OBS_SCALE`.
        t_current: first future canvas frame (``None``: ``frames // 2``).
        topology: ``"causal_temporal"`` (HOLD) or ``"dense"``.
        n_train: training windows.
        n_val: validation windows.
        n_test: test (and predict) windows.
        batch_size: windows per batch.
        num_workers: DataLoader workers.
        seed: seed of the episodes, the policy and the training shuffle.
        d_model: canvas token width.

    Raises:
        CanvasValidationError: a bad argument, named with its value.
        MissingDependencyError: gymnasium is not installed (when data is built).

    """

    def __init__(
        self,
        frames: int = 8,
        random_action_prob: float = 0.5,
        max_episode_steps: int = 100,
        reward_mode: Literal["failure", "survival"] = "failure",
        normalize: bool = True,
        t_current: int | None = None,
        topology: TopologyKind = "causal_temporal",
        n_train: int = 512,
        n_val: int = 64,
        n_test: int = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        d_model: int = 64,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, d_model=d_model)
        self.check_int("frames", frames, minimum=2)
        self.check_float("random_action_prob", random_action_prob, minimum=0.0, maximum=1.0)
        self.check_int("max_episode_steps", max_episode_steps, minimum=frames)
        self.check_choice("reward_mode", reward_mode, ("failure", "survival"))
        self.check_bool("normalize", normalize)
        if t_current is not None:
            self.check_int("t_current", t_current, minimum=0, maximum=frames)
        self.check_choice("topology", topology, ("causal_temporal", "dense"))
        for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            self.check_int(name, value, minimum=1)
        self.frames = frames
        self.random_action_prob = float(random_action_prob)
        self.max_episode_steps = max_episode_steps
        self.reward_mode, self.normalize = reward_mode, normalize
        self.t_current = frames // 2 if t_current is None else t_current
        self.topology = topology
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._init_canvas()

    @property
    def normalization(self) -> dict[str, dict[str, list[float]]]:
        """``obs`` divided by :data:`OBS_SCALE` (when ``normalize``): how policies map raw observations."""
        if not self.normalize:
            return {}
        return {"obs": {"mean": [0.0] * len(OBS_SCALE), "std": [float(x) for x in OBS_SCALE]}}

    def build_schema(self) -> CanvasSchema:
        """``obs``, ``action`` and ``reward`` side by side, one position each per step."""
        t = self.frames
        layout = CanvasLayout(
            T=t,
            H=1,
            W=3,
            d_model=self.d_model,
            regions={"obs": (0, t, 0, 1, 0, 1), "action": (0, t, 0, 1, 1, 2), "reward": (0, t, 0, 1, 2, 3)},
            t_current=self.t_current,
        )
        topology = self.topology_for(self.topology, list(layout.regions))
        return CanvasSchema(layout, topology, metadata={"datamodule": "cartpole", "env": "CartPole-v1"})

    def build_region_formats(self) -> dict[str, RegionFormat]:
        """4-d observation vector, 2-d one-hot action, scalar reward."""
        return {
            "obs": RegionFormat("vector", dim=4),
            "action": RegionFormat("action", dim=2),
            "reward": RegionFormat("vector", dim=1),
        }

    def build_dataset(self, split: Split) -> TensorDictDataset:
        """Play the split's episodes (seeded by ``(seed, split)``) and cut them into windows."""
        tensors = collect_cartpole_windows(
            split_rng(self.seed, split),
            self.sizes[split],
            frames=self.frames,
            random_action_prob=self.random_action_prob,
            max_episode_steps=self.max_episode_steps,
            reward_mode=self.reward_mode,
            normalize=self.normalize,
        )
        if not torch.isfinite(tensors["obs"]).all():
            msg = f"CartPoleDataModule: the {split!r} split has non-finite observations"
            raise CanvasValidationError(msg)
        return TensorDictDataset(tensors)
