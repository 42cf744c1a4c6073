"""Videos of evaluation episodes: gymnasium's ``RecordVideo`` when its encoder imports, else PNG frames.

``RecordVideo`` writes MP4 files through moviepy; without moviepy each recorded episode
becomes a folder of ``frame-00000.png`` ... (written atomically) from the env's
``rgb_array`` renders. Either way the env must render ``rgb_array`` frames: a missing
renderer (CartPole's pygame) raises :class:`~canvas_engineering.errors.MissingDependencyError`
at the first reset, before any episode is played.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from canvas_engineering._atomic import atomic_write_bytes
from canvas_engineering.errors import MissingDependencyError, PolicyError

__all__ = ["PNGFrames", "record", "recorded_files", "reset_recording"]


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class PNGFrames(gym.Wrapper):
    """Save every rendered frame of the first ``episodes`` episodes as ``episode-XXX/frame-XXXXX.png``."""

    def __init__(self, env: gym.Env, folder: str | Path, episodes: int) -> None:
        super().__init__(env)
        self.folder, self.episodes = Path(folder), episodes
        self.episode, self.frame = -1, 0

    def _save(self) -> None:
        if 0 <= self.episode < self.episodes:
            path = self.folder / f"episode-{self.episode:03d}" / f"frame-{self.frame:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, _png(self.env.render()))
            self.frame += 1

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:  # noqa: D102
        out = self.env.reset(**kwargs)
        self.episode, self.frame = self.episode + 1, 0
        self._save()
        return out

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:  # noqa: D102
        out = self.env.step(action)
        self._save()
        return out


def record(env: gym.Env, folder: str | Path, episodes: int) -> gym.Env:
    """Wrap ``env`` so that its first ``episodes`` episodes are recorded under ``folder``.

    Raises:
        PolicyError: the env does not render ``rgb_array`` frames.

    """
    if getattr(env, "render_mode", None) != "rgb_array":
        msg = f"recording needs an env made with render_mode='rgb_array', got render_mode={env.render_mode!r}"
        raise PolicyError(msg)
    Path(folder).mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("moviepy") is not None:
        from gymnasium.wrappers import RecordVideo

        return RecordVideo(
            env, str(folder), episode_trigger=lambda i: i < episodes, name_prefix="episode", disable_logger=True
        )
    return PNGFrames(env, folder, episodes)


def recorded_files(folder: str | Path) -> list[str]:
    """Return the recorded videos (``.mp4``) or PNG episode folders under ``folder``, sorted."""
    folder = Path(folder)
    videos = sorted(str(p) for p in folder.glob("*.mp4"))
    return videos or sorted(str(p) for p in folder.glob("episode-*") if p.is_dir())


def reset_recording(env: gym.Env, seed: int) -> tuple[Any, dict[str, Any]]:
    """``env.reset(seed=seed)``, turning a missing renderer into :class:`MissingDependencyError`."""
    try:
        return env.reset(seed=seed)
    except gym.error.DependencyNotInstalled as err:
        msg = f"recording {env.spec.id if env.spec else type(env.unwrapped).__name__} needs its renderer: {err}"
        raise MissingDependencyError(msg) from None
