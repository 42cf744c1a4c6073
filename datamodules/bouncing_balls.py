"""``BouncingBallsDataModule``: generated video of balls pushed around a box (the quick-start data).

Each sample is ``frames`` frames of 1 or 2 Gaussian blobs (values in [0, 1]) moving in a
``size x size`` box. Every frame an agent applies a *push* (a 2-d acceleration, the same
for every ball, like tilting the box): a noisy controller that steers the balls towards the
centre. The push is the frame's action and the reward is how close the balls are to the
centre, so (like an RL rollout) actions follow from what the video shows, actions determine
the motion (they are visible as acceleration), and good actions raise the reward.

Dynamics (per ball, positions ``p`` in pixels, ``c`` the centre, ``mean`` over the sample's
balls, ``e_t ~ N(0, 1)``)::

    a_t     = clip(0.5 * (c - mean(p_t)) / (size / 2) - 0.5 * mean(v_t) + push_noise * e_t, -1, 1)
    v_{t+1} = damping * v_t + max_push * a_t
    p_{t+1} = p_t + v_{t+1}            (reflected off the walls, velocity flipped)

so ``action[t] = a_t`` is the push applied after frame ``t`` (it shows up between frames
``t`` and ``t + 1``), and ``reward[t] = -mean_ball |p_t - c| / (size / 2)``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from canvas_engineering.datamodules.base import CanvasDataModule, Split, TensorDictDataset, TopologyKind, split_rng
from torch.utils.data import Dataset

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.models.region_codecs import RegionFormat

__all__ = [
    "BouncingBallsDataModule",
    "ball_reward",
    "constant_velocity_track",
    "generate_bouncing_balls",
    "reflect",
    "render_balls",
]


def render_balls(track: np.ndarray, present: np.ndarray, size: int, ball_sigma: float) -> np.ndarray:
    """Render Gaussian blobs at ball positions.

    ``track (n, T, k, 2)``, ``present (n, k)`` -> ``(n, T, size, size)`` in [0, 1].
    """
    grid = np.arange(size, dtype=np.float64)
    gy = np.exp(-((grid - track[..., 0:1]) ** 2) / (2 * ball_sigma**2))  # (n, T, k, size), separable
    gx = np.exp(-((grid - track[..., 1:2]) ** 2) / (2 * ball_sigma**2))
    gy = gy * present[:, None, :, None]
    return np.clip(np.einsum("ntky,ntkx->ntyx", gy, gx), 0.0, 1.0)


def ball_reward(track: np.ndarray, present: np.ndarray, size: int) -> np.ndarray:
    """``-mean_ball |p - c| / (size / 2)``: ``(n, T)`` from ``track (n, T, k, 2)``."""
    centre = (size - 1) / 2
    dist = np.linalg.norm(track - centre, axis=-1)  # (n, T, k)
    return -((dist * present[:, None, :]).sum(-1) / present.sum(-1)[:, None]) / (size / 2)


def reflect(pos: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold coordinates into ``[lo, hi]`` as elastic walls would (a triangle wave)."""
    span = hi - lo
    return lo + span - np.abs(np.mod(pos - lo, 2 * span) - span)


def constant_velocity_track(track: np.ndarray, velocity: np.ndarray, last: int, size: int) -> np.ndarray:
    """Positions after frame ``last`` extrapolated at constant velocity (no push, no damping).

    ``track``/``velocity`` are ``(n, T, k, 2)``: each ball's true position at every frame
    and the velocity that brought it there. Frames ``<= last`` keep their true positions;
    frame ``last + j`` holds ``p_last + j * v_last``, reflected off the walls.
    """
    out = track.copy()
    steps = np.arange(track.shape[1] - last - 1, dtype=np.float64) + 1.0  # j = 1, 2, ...
    ahead = track[:, last, None] + steps[None, :, None, None] * velocity[:, last, None]
    out[:, last + 1 :] = reflect(ahead, 0.0, float(size - 1))
    return out


def generate_bouncing_balls(
    rng: np.random.Generator,
    n: int,
    *,
    frames: int,
    size: int,
    min_balls: int,
    max_balls: int,
    ball_sigma: float,
    max_push: float,
    push_noise: float,
    damping: float,
    return_state: bool = False,
) -> dict[str, torch.Tensor]:
    """``n`` samples: ``video (n, frames, 1, size, size)``, ``action (n, frames, 2)``, ``reward (n, frames, 1)``.

    Vectorised over samples and balls (a loop over frames only). See the module docstring
    for the dynamics. With ``return_state`` the dict also holds the hidden state:
    ``position``/``velocity`` ``(n, frames, max_balls, 2)`` (pixels, [y, x]; velocity is the
    one that brought the ball to that frame) and ``present`` ``(n, max_balls)``.
    """
    k = max_balls
    lo, hi = 0.0, float(size - 1)  # pixel-centre coordinates of the walls
    margin = min(2.0 * ball_sigma, (hi - lo) / 2)
    count = rng.integers(min_balls, max_balls + 1, size=n)  # balls per sample
    present = (np.arange(k)[None, :] < count[:, None]).astype(np.float64)  # (n, k)
    pos = rng.uniform(lo + margin, hi - margin, size=(n, k, 2))  # (n, k, [y, x])
    vel = rng.uniform(-2.0, 2.0, size=(n, k, 2))
    noise = rng.standard_normal(size=(n, frames, 2))
    centre = (lo + hi) / 2
    weights = present / present.sum(-1, keepdims=True)  # (n, k): mean over present balls
    pushes = np.empty((n, frames, 2))  # the actions, one per frame
    track = np.empty((n, frames, k, 2))
    vtrack = np.empty((n, frames, k, 2))
    for t in range(frames):
        track[:, t] = pos
        vtrack[:, t] = vel
        mean_pos = np.einsum("nk,nkc->nc", weights, pos)  # (n, 2)
        mean_vel = np.einsum("nk,nkc->nc", weights, vel)  # (n, 2)
        steer = 0.5 * (centre - mean_pos) / (size / 2) - 0.2 * mean_vel
        pushes[:, t] = np.clip(steer + push_noise * noise[:, t], -1.0, 1.0)
        vel = damping * vel + max_push * pushes[:, t, None, :]  # same push on every ball
        pos = pos + vel
        below, above = pos < lo, pos > hi
        pos = np.where(below, 2 * lo - pos, np.where(above, 2 * hi - pos, pos))
        vel = np.where(below | above, -vel, vel)
        pos = np.clip(pos, lo, hi)  # a push stronger than the box is wide
    video = render_balls(track, present, size, ball_sigma)
    reward = ball_reward(track, present, size)
    out = {
        "video": torch.from_numpy(video[:, :, None]).float(),  # (n, T, 1, size, size)
        "action": torch.from_numpy(pushes).float(),  # (n, T, 2)
        "reward": torch.from_numpy(reward[..., None]).float(),  # (n, T, 1)
    }
    if return_state:
        out["position"] = torch.from_numpy(track)
        out["velocity"] = torch.from_numpy(vtrack)
        out["present"] = torch.from_numpy(present)
    return out


class BouncingBallsDataModule(CanvasDataModule):
    """Generated bouncing-ball video with per-frame pushes (actions) and rewards.

    Canvas (defaults): ``T=8``, ``H=4``, ``W=5``; ``video`` is the left 4x4 block of every
    frame (one 4x4-pixel patch per position), ``action`` and ``reward`` one position each in
    the last column; ``t_current=4``; causal-temporal topology (HOLD fill).

    Batch (defaults, ``B = batch_size``)::

        video   (B, 8, 1, 16, 16)  -> region "video"  (patches, C=1, p=4)
        action  (B, 8, 2)          -> region "action" (action, dim=2): the push after each frame
        reward  (B, 8, 1)          -> region "reward" (vector, dim=1): -distance to the centre / (size/2)

    Args:
        frames: frames per sample (canvas ``T``, >= 2).
        size: frame side in pixels (a multiple of ``patch_size``, at least ``2 * patch_size``).
        patch_size: patch side in pixels; the video region is ``size/patch_size`` square.
        min_balls: fewest balls in a sample (>= 1).
        max_balls: most balls in a sample (``min_balls`` .. 4); each sample draws its count.
        ball_sigma: Gaussian blob width in pixels (> 0).
        max_push: largest push per frame, in pixels per frame squared (>= 0).
        push_noise: standard deviation of the random part of the push, in action units (>= 0).
        damping: velocity kept from one frame to the next, in [0, 1].
        t_current: first future canvas frame (``None``: ``frames // 2``).
        topology: ``"causal_temporal"`` (HOLD) or ``"dense"``.
        action_loss_weight: loss weight of the action region (the pushes carry noise, so
            their error dwarfs the video's unless weighted; the video has 16 positions a frame).
        video_attention: the attention function type of the video -> video connections
            (``"local_attention"``: each patch reads only its 3 x 3 neighbourhood, the way
            a ball moves; any installed type works).
        n_train: training samples.
        n_val: validation samples.
        n_test: test (and predict) samples.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the data and of the training shuffle.
        d_model: canvas token width.

    Raises:
        CanvasValidationError: a bad argument, named with its value.

    Example::

        >>> dm = BouncingBallsDataModule(n_train=8, n_val=4, n_test=4, batch_size=4)
        >>> dm.setup("fit")
        >>> {k: tuple(v.shape) for k, v in next(iter(dm.train_dataloader())).items()}
        {'video': (4, 8, 1, 16, 16), 'action': (4, 8, 2), 'reward': (4, 8, 1)}

    """

    def __init__(
        self,
        frames: int = 8,
        size: int = 16,
        patch_size: int = 4,
        min_balls: int = 1,
        max_balls: int = 2,
        ball_sigma: float = 1.2,
        max_push: float = 1.0,
        push_noise: float = 0.3,
        damping: float = 0.95,
        t_current: int | None = None,
        topology: TopologyKind = "causal_temporal",
        video_attention: str = "cross_attention",
        action_loss_weight: float = 1.0,
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
        self.check_int("patch_size", patch_size, minimum=1)
        self.check_int("size", size, minimum=2 * patch_size)
        if size % patch_size:
            self._fail("size", size, f"must be a multiple of patch_size={patch_size}")
        self.check_int("min_balls", min_balls, minimum=1, maximum=4)
        self.check_int("max_balls", max_balls, minimum=min_balls, maximum=4)
        self.check_float("ball_sigma", ball_sigma, minimum=0.0, open_min=True)
        self.check_float("max_push", max_push, minimum=0.0)
        self.check_float("push_noise", push_noise, minimum=0.0)
        self.check_float("damping", damping, minimum=0.0, maximum=1.0)
        if t_current is not None:
            self.check_int("t_current", t_current, minimum=0, maximum=frames)
        self.check_choice("topology", topology, ("causal_temporal", "dense"))
        self.check_float("action_loss_weight", action_loss_weight, minimum=0.0, maximum=1e6)
        if not isinstance(video_attention, str) or not video_attention:
            rule = "must be an attention type name (canvas-engineering plugins)"
            self._fail("video_attention", video_attention, rule)
        for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            self.check_int(name, value, minimum=1)
        self.frames, self.size, self.patch_size = frames, size, patch_size
        self.min_balls, self.max_balls = min_balls, max_balls
        self.ball_sigma, self.max_push, self.damping = float(ball_sigma), float(max_push), float(damping)
        self.push_noise = float(push_noise)
        self.t_current = frames // 2 if t_current is None else t_current
        self.topology = topology
        self.video_attention = video_attention
        self.action_loss_weight = float(action_loss_weight)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._state: dict[str, dict[str, torch.Tensor]] = {}
        self._init_canvas()

    def build_schema(self) -> CanvasSchema:
        """``video`` g x g patches per frame, ``action``/``reward`` one position each in an extra column."""
        g = self.size // self.patch_size
        t = self.frames
        layout = CanvasLayout(
            T=t,
            H=g,
            W=g + 1,
            d_model=self.d_model,
            regions={
                "video": (0, t, 0, g, 0, g),
                "action": RegionSpec((0, t, 0, 1, g, g + 1), loss_weight=self.action_loss_weight),
                "reward": (0, t, 1, 2, g, g + 1),
            },
            t_current=self.t_current,
        )
        topology = self.topology_for(self.topology, list(layout.regions))
        if self.video_attention != "cross_attention":  # video reads video through another attention type
            conns = [
                dataclasses.replace(c, fn=self.video_attention) if (c.src, c.dst) == ("video", "video") else c
                for c in topology.connections
            ]
            topology = CanvasTopology(conns)
        return CanvasSchema(layout, topology, metadata={"datamodule": "bouncing_balls"})

    def build_region_formats(self) -> dict[str, RegionFormat]:
        """Video patches, a 2-d push action, a scalar reward."""
        return {
            "video": RegionFormat("patches", channels=1, patch_size=self.patch_size),
            "action": RegionFormat("action", dim=2),
            "reward": RegionFormat("vector", dim=1),
        }

    def build_dataset(self, split: Split) -> TensorDictDataset:
        """Generate the split (seeded by ``(seed, split)``); its hidden state is kept for :meth:`baselines`."""
        tensors = generate_bouncing_balls(
            split_rng(self.seed, split),
            self.sizes[split],
            frames=self.frames,
            size=self.size,
            min_balls=self.min_balls,
            max_balls=self.max_balls,
            ball_sigma=self.ball_sigma,
            max_push=self.max_push,
            push_noise=self.push_noise,
            damping=self.damping,
            return_state=True,
        )
        self._state[split] = {k: tensors.pop(k) for k in ("position", "velocity", "present")}
        return TensorDictDataset(tensors)

    def baselines(self, split: Split, dataset: Dataset) -> dict[str, dict[str, torch.Tensor]]:
        """Return the ``"mean"`` and ``"constant_velocity"`` baselines.

        Constant velocity: each ball continues from its true position and
        velocity at the last context frame, without pushes or damping, reflected off the walls;
        the video is rendered from those positions and the reward computed from them.
        """
        out = super().baselines(split, dataset)
        state = self._state[split]
        last = self.t_current - 1
        if last < 0 or last >= self.frames - 1:
            return out
        present = state["present"].numpy()
        track = constant_velocity_track(state["position"].numpy(), state["velocity"].numpy(), last, self.size)
        video = render_balls(track, present, self.size, self.ball_sigma)
        reward = ball_reward(track, present, self.size)
        out["constant_velocity"] = {
            "video": torch.from_numpy(video[:, :, None]).float(),
            "reward": torch.from_numpy(reward[..., None]).float(),
        }
        return out
