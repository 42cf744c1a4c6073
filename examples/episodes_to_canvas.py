"""Episodes to canvas: record CartPole into a LeRobot v3.0 folder, train on it, score held-out episodes.

1. **Record.** gymnasium ``CartPole-v1`` played by a noisy heuristic (push towards the pole's
   lean; a random action with probability 0.3), at the environment's 50 Hz: the state
   (x, x_dot, theta, theta_dot), the action (one-hot, 2), the reward and a 24 x 24 top-down
   camera image drawn from the state (cart and pole; CartPole's own renderer needs pygame).
   Written with :func:`canvas_engineering.datamodules.write_lerobot_dataset` as a LeRobot
   v3.0 folder: parquet tables, one mp4 per camera, ``meta/info.json``, ``meta/stats.json``.
2. **Load.** ``EpisodeDataModule(root=...)`` reads the folder (the same call reads any LeRobot
   dataset on disk), with ``rates={"observation.images.top": 25}``: the camera keeps every
   second frame, so its region gets period 2 next to the 50 Hz state and action. Windows of
   8 history + 4 horizon frames never cross an episode; train/val/test are split by episode.
3. **Train and score.** A small ``CanvasModule`` trains with ``lightning.Trainer``; then
   ``trainer.test`` samples the future of held-out episodes and scores it against repeating
   the last context frame and the dataset mean, on the same batches.

The CLI does the same from any folder::

    canvas-engineering fit --data=episodes --data.root=runs/examples/episodes_to_canvas/cartpole_lerobot

    python examples/episodes_to_canvas.py [--quick] [--out DIR]
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Example, fit, format_table

NAME = "episodes_to_canvas"
FULL = {"episodes": 120, "max_steps": 200, "steps": 600, "batch_size": 32, "depth": 2, "d_model": 64}
QUICK = {"episodes": 8, "max_steps": 40, "steps": 4, "batch_size": 8, "depth": 1, "d_model": 32}
SIDE, RANDOM_ACTION_PROB = 24, 0.3


def draw(states: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Top-down pictures of the cart and pole for every state ``(n, 4)``: ``(n, side, side, 3)`` uint8."""
    n = len(states)
    ys, xs = np.mgrid[0:side, 0:side]
    cart_x = (states[:, 0] / 4.8 + 0.5) * (side - 1)  # x in [-2.4, 2.4] -> pixels
    base_y = side * 0.75
    tip_x = cart_x + np.sin(states[:, 2]) * side * 0.45
    tip_y = base_y - np.cos(states[:, 2]) * side * 0.45
    img = np.full((n, side, side, 3), 240, dtype=np.uint8)
    cart = (np.abs(xs[None] - cart_x[:, None, None]) <= 2.5) & (np.abs(ys[None] - base_y) <= 1.5)
    # distance of every pixel to the pole segment (vectorised over frames and pixels)
    px, py = xs[None] - cart_x[:, None, None], ys[None] - base_y
    dx, dy = (tip_x - cart_x)[:, None, None], (tip_y - base_y)[:, None, None]
    u = np.clip((px * dx + py * dy) / (dx**2 + dy**2), 0, 1)
    pole = (px - u * dx) ** 2 + (py - u * dy) ** 2 <= 1.0
    img[cart] = (40, 60, 160)
    img[pole] = (200, 60, 40)
    return img


def record(n_episodes: int, max_steps: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Play ``n_episodes`` seeded CartPole episodes; return their features at 50 Hz."""
    import gymnasium as gym
    from canvas_engineering.datamodules.cartpole import heuristic_action

    rng = np.random.default_rng(seed)
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    episodes = []
    try:
        for _ in range(n_episodes):
            obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
            states, actions, rewards = [], [], []
            done = False
            while not done:
                action = int(rng.integers(2)) if rng.random() < RANDOM_ACTION_PROB else heuristic_action(obs)
                states.append(obs)
                actions.append(action)
                obs, reward, terminated, truncated, _ = env.step(action)
                rewards.append(reward)
                done = terminated or truncated
            state = np.asarray(states, dtype=np.float32)
            episodes.append({
                "observation.images.top": draw(state),
                "observation.state": state,
                "action": np.eye(2, dtype=np.float32)[actions],
                "next.reward": np.asarray(rewards, dtype=np.float32)[:, None],
            })
    finally:
        env.close()
    return episodes


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Record, load, train, test; print and return the held-out metrics."""
    import lightning.pytorch as pl
    from canvas_engineering.datamodules import EpisodeDataModule, write_lerobot_dataset

    from canvas_engineering import CanvasModule
    from canvas_engineering.training.future_metrics import future_metrics_table

    ex = Example(NAME, __doc__)
    args = ex.parse(argv)
    cfg = dict(QUICK if args.quick else FULL)
    root = args.out / "cartpole_lerobot"
    shutil.rmtree(root, ignore_errors=True)  # a fresh recording each run
    episodes = record(cfg["episodes"], cfg["max_steps"], args.seed)
    write_lerobot_dataset(root, episodes, fps=50, version="v3.0", tasks=["balance the pole"] * len(episodes),
                          robot_type="cartpole")
    print(f"recorded {len(episodes)} episodes ({sum(len(e['action']) for e in episodes)} frames) into {root}")

    dm = EpisodeDataModule(root=str(root), history=8, horizon=4, rates={"observation.images.top": 25},
                           patch_size=8, batch_size=cfg["batch_size"], seed=args.seed, d_model=cfg["d_model"])
    print(dm.describe())
    pl.seed_everything(args.seed, verbose=False)
    model = CanvasModule(dm.schema, dm.region_formats, backbone_config={"depth": cfg["depth"], "n_heads": 4},
                         lr=1e-3, warmup_steps=min(50, cfg["steps"] // 5), sample_metric_steps=8)
    run = fit(model, dm, cfg["steps"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=sys.stderr.isatty(),
                         enable_model_summary=False)
    metrics = trainer.test(model, dm, verbose=False)[0]
    table = future_metrics_table(metrics, stage="test")

    def mean_mse(source: str, region: str) -> float:
        stage = "test/sample" if source == "sample" else f"test/baseline/{source}"
        prefix = f"{stage}/{region}/mse/frame_"
        values = [v for k, v in metrics.items() if k.startswith(prefix)]
        return float(np.mean(values)) if values else float("nan")

    regions = ["observation.state", "observation.images.top", "action"]
    rows = [[r, mean_mse("sample", r), mean_mse("last", r), mean_mse("mean", r)] for r in regions]
    lines = [
        f"{len(dm.split_episodes['test'])} held-out episodes, {len(dm.windows['test'][0])} windows; "
        f"{cfg['steps']} steps x batch {cfg['batch_size']} in {run['seconds']:.0f} s; "
        f"test/loss {metrics['test/loss']:.4f}",
        "",
        *format_table(["region (normalised units)", "sampled MSE", "repeat last", "mean"], rows),
        "",
        table,
    ]
    ex.report("Episodes to canvas: CartPole recorded as LeRobot v3.0, trained through EpisodeDataModule", lines)
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "mse": {r[0]: r[1:] for r in rows},
            "root": str(root), "episodes": len(episodes), "seconds": ex.elapsed()}


if __name__ == "__main__":
    main()
