"""``evaluate_policy``: play a policy in a gymnasium environment and summarise its episode returns.

Episodes run in lock-step over ``num_envs`` copies of the env (one batched ``act`` per step for
all of them); episode ``e`` starts from ``env.reset(seed=seed + e)``, so two policies evaluated
with the same seed meet the same initial states. A slot whose episode ends starts the next one
and resets its row of the policy (``policy.reset(env_ids=[slot])``); once no episode is left,
its row is fed its last observation and its actions are ignored.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canvas_engineering._atomic import atomic_write_text
from canvas_engineering.errors import PolicyError
from canvas_engineering.validation import check_int

__all__ = ["PolicyEvaluation", "evaluate_policy"]

#: the bar format of Lightning's progress bar
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


@dataclass
class PolicyEvaluation:
    """Per-episode results of :func:`evaluate_policy`.

    Args:
        env_id: the environment's id (or class name).
        seed: episode ``e`` started from ``reset(seed=seed + e)``.
        returns: each episode's summed reward.
        lengths: each episode's steps.
        seconds: wall time of the evaluation.
        plot: the summary plot written (``None``: none).
        videos: the recorded videos (or PNG frame folders).

    """

    env_id: str
    seed: int
    returns: list[float]
    lengths: list[int]
    seconds: float = 0.0
    plot: str | None = None
    videos: list[str] = field(default_factory=list)

    @property
    def episodes(self) -> int:
        """Number of episodes."""
        return len(self.returns)

    @property
    def mean(self) -> float:
        """Mean return."""
        return float(statistics.fmean(self.returns))

    @property
    def std(self) -> float:
        """Standard deviation of the returns (population, as ``numpy.std``)."""
        return float(statistics.pstdev(self.returns))

    @property
    def min(self) -> float:
        """Smallest return."""
        return float(min(self.returns))

    @property
    def max(self) -> float:
        """Largest return."""
        return float(max(self.returns))

    @property
    def mean_length(self) -> float:
        """Mean episode length."""
        return float(statistics.fmean(self.lengths))

    def summary(self) -> str:
        """One line: mean ± std of the returns, their range and the mean length."""
        return (
            f"{self.env_id}: return {self.mean:.1f} ± {self.std:.1f} over {self.episodes} episodes "
            f"(min {self.min:.1f}, max {self.max:.1f}; mean length {self.mean_length:.1f})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields plus ``mean``, ``std``, ``min``, ``max``, ``mean_length``."""
        out = asdict(self)
        out.update(episodes=self.episodes, mean=self.mean, std=self.std, min=self.min, max=self.max)
        out["mean_length"] = self.mean_length
        return out

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON (temp file then rename); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path


def _make_envs(env: Any, num_envs: int | None, episodes: int, max_episode_steps: int | None, video: bool) -> list:
    import gymnasium as gym

    if isinstance(env, str):
        count = min(episodes, 32) if num_envs is None else check_int(num_envs, "num_envs", minimum=1, error=PolicyError)
        count = min(count, episodes)
        kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        try:
            return [
                gym.make(env, render_mode="rgb_array" if video and i == 0 else None, **kwargs) for i in range(count)
            ]
        except gym.error.Error as err:
            msg = f"environment {env!r} cannot be made: {err}"
            raise PolicyError(msg) from None
    if not isinstance(env, gym.Env):
        msg = f"env must be a gymnasium.Env or an environment id, got {type(env).__name__}"
        raise PolicyError(msg)
    if num_envs not in (None, 1):
        msg = f"num_envs={num_envs} needs an environment id (an env instance runs one episode at a time)"
        raise PolicyError(msg)
    if max_episode_steps is not None:
        msg = "max_episode_steps needs an environment id (wrap your env in gymnasium's TimeLimit instead)"
        raise PolicyError(msg)
    return [env]


def _default_features(policy: Any, env: Any) -> Callable[[Any], Mapping[str, Any]]:
    from gymnasium import spaces

    if isinstance(env.observation_space, spaces.Dict):
        return lambda obs: obs
    names = tuple(getattr(policy, "observations", ()) or ())
    if len(names) != 1:
        msg = (
            f"the policy observes {list(names) or 'no named features'} but {env.observation_space} is one array: "
            "pass features=lambda obs: {...} mapping the env's observation to the policy's features"
        )
        raise PolicyError(msg)
    return lambda obs: {names[0]: obs}


def _stack(observations: list[Any]) -> Any:
    if isinstance(observations[0], Mapping):
        return {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    return np.stack([np.asarray(o) for o in observations])


def evaluate_policy(
    policy: Any,
    env: Any,
    episodes: int = 10,
    seed: int = 0,
    *,
    num_envs: int | None = None,
    max_episode_steps: int | None = None,
    features: Callable[[Any], Mapping[str, Any]] | None = None,
    video: str | os.PathLike[str] | None = None,
    video_episodes: int = 1,
    plot: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PolicyEvaluation:
    """Play ``episodes`` episodes of ``env`` with ``policy``; return the per-episode returns and lengths.

    Args:
        policy: a :class:`~canvas_engineering.CanvasPolicy`, or any object with
            ``reset(env_ids=None)`` and ``act(observation) -> (B, ...) actions`` (e.g. a scripted
            baseline); actions are turned into env actions by
            :func:`~canvas_engineering.policy.spaces.to_env_action`.
        env: a gymnasium environment id (``"CartPole-v1"``; ``num_envs`` copies are made) or an
            env instance (one episode at a time).
        episodes: how many episodes.
        seed: episode ``e`` starts from ``reset(seed=seed + e)``.
        num_envs: copies of an env id played in lock-step (``None``: ``min(episodes, 32)``).
        max_episode_steps: episode length limit of an env id (``None``: its registered one).
        features: env observation (batched over the copies) -> the policy's observation mapping
            (``None``: a ``Dict`` observation as it is, else ``{the policy's one observed feature: obs}``).
        video: a folder to record the first ``video_episodes`` episodes of the first copy into
            (MP4 through ``RecordVideo`` when moviepy imports, else PNG frames).
        video_episodes: how many episodes to record.
        plot: a PNG path for the summary plot (per-episode returns, mean ± std).
        progress: show a progress bar over the episodes (Lightning's style).

    Returns:
        A :class:`PolicyEvaluation` (``to_json(path)`` writes it).

    Raises:
        PolicyError: a bad argument or environment, an observation the policy refuses.
        MissingDependencyError: gymnasium is not installed, or ``video`` needs a renderer that is not.

    """
    try:
        import gymnasium  # noqa: F401
    except ImportError as err:
        from canvas_engineering.errors import MissingDependencyError

        msg = "evaluate_policy needs gymnasium: pip install 'canvas-engineering[data]'"
        raise MissingDependencyError(msg) from err
    from canvas_engineering.policy import recording
    from canvas_engineering.policy.spaces import to_env_action

    episodes = check_int(episodes, "episodes", minimum=1, error=PolicyError)
    seed = check_int(seed, "seed", error=PolicyError)
    video_episodes = check_int(video_episodes, "video_episodes", minimum=1, error=PolicyError)
    for attr in ("reset", "act"):
        if not callable(getattr(policy, attr, None)):
            msg = f"policy {type(policy).__name__} has no {attr}() method"
            raise PolicyError(msg)
    envs = _make_envs(env, num_envs, episodes, max_episode_steps, video is not None)
    env_id = env if isinstance(env, str) else (envs[0].spec.id if envs[0].spec else type(envs[0].unwrapped).__name__)
    if video is not None:
        envs[0] = recording.record(envs[0], video, video_episodes)
    to_features = features if features is not None else _default_features(policy, envs[0])
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    bar = Tqdm(total=episodes, desc=f"Rollout {env_id}", unit="episode", disable=not progress, bar_format=_BAR_FORMAT)
    start = time.perf_counter()
    returns: dict[int, float] = {}
    lengths: dict[int, int] = {}
    slot_episode, slot_return, slot_length = [-1] * len(envs), [0.0] * len(envs), [0] * len(envs)
    last_obs: list[Any] = [None] * len(envs)
    next_episode = 0

    def begin(slot: int) -> None:
        nonlocal next_episode
        slot_episode[slot], slot_return[slot], slot_length[slot] = next_episode, 0.0, 0
        last_obs[slot], _ = recording.reset_recording(envs[slot], seed + next_episode)
        next_episode += 1

    try:
        policy.reset()
        for slot in range(len(envs)):
            begin(slot)
        while len(returns) < episodes:
            actions = to_env_action(policy.act(to_features(_stack(last_obs))), envs[0].action_space)
            restarted = []
            for slot, env_ in enumerate(envs):
                if slot_episode[slot] < 0:
                    continue  # idle: no episode left for this copy
                obs, reward, terminated, truncated, _ = env_.step(actions[slot])
                slot_return[slot] += float(reward)
                slot_length[slot] += 1
                last_obs[slot] = obs
                if terminated or truncated:
                    returns[slot_episode[slot]], lengths[slot_episode[slot]] = slot_return[slot], slot_length[slot]
                    bar.update(1)
                    bar.set_postfix(last_return=f"{slot_return[slot]:.1f}")
                    if next_episode < episodes:
                        begin(slot)
                        restarted.append(slot)
                    else:
                        slot_episode[slot] = -1
            if restarted:
                policy.reset(env_ids=restarted)
    finally:
        bar.close()
        for env_ in envs if isinstance(env, str) else []:
            env_.close()
        if video is not None and not isinstance(env, str):
            envs[0].close()  # the recorder flushes its last video; the user's env stays theirs to close
    result = PolicyEvaluation(
        env_id=str(env_id),
        seed=seed,
        returns=[returns[e] for e in range(episodes)],
        lengths=[lengths[e] for e in range(episodes)],
        seconds=time.perf_counter() - start,
        videos=recording.recorded_files(video) if video is not None else [],
    )
    if plot is not None:
        result.plot = str(returns_plot(result, plot))
    return result


def returns_plot(result: PolicyEvaluation, path: str | os.PathLike[str]) -> Path:
    """Draw each episode's return with the mean ± std band and write it as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from canvas_engineering.viz import save_figure

    fig, (ax, hist) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    episodes = np.arange(result.episodes)
    ax.bar(episodes, result.returns, color="#4A90D9", alpha=0.75, label="episode return")
    ax.axhline(result.mean, color="k", lw=1, label=f"mean {result.mean:.1f}")
    band = (result.mean - result.std, result.mean + result.std)
    ax.axhspan(*band, color="k", alpha=0.1, label=f"± std {result.std:.1f}")
    ax.set_xlabel(f"episode (reset seed {result.seed} + episode)")
    ax.set_ylabel("return")
    ax.set_title(result.summary(), fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    bins = max(1, min(10, result.episodes))
    spread = result.max - result.min
    hist.hist(result.returns, bins=bins if spread > 0 else 1, orientation="horizontal", color="#4A90D9", alpha=0.75)
    hist.set_xlabel("episodes")
    hist.set_ylim(ax.get_ylim())
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
