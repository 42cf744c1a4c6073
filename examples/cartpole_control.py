"""CartPole Control: a canvas of observation, action, reward and a latent plan field drives a real env.

Data: windows of gymnasium ``CartPole-v1`` rollouts played by a noisy heuristic (push towards
the pole's lean; a random action with probability ``random_action_prob``), from
``CartPoleDataModule``.

Canvas: the datamodule's ``obs`` / ``action`` / ``reward`` columns (one position each per
step) plus a ``plan`` region of a few positions per step that no tensor feeds: a latent
scratchpad. Observations are context (``is_output=False``), actions and rewards are denoised
at every frame (``t_current=0``). Topology: ``causal_temporal`` over all four regions (each
region attends itself in its frame and every region one frame back), plus same-frame reads
plan <- obs, action <- obs and plan, reward <- obs, action and plan. No query sees a later
frame, so the action at frame ``t`` depends on observations up to ``t`` only.

Control: ``CanvasPolicy`` wraps the trained model: at every env step it places the last
``frames`` observations (normalised with the statistics stored in the model) on the canvas,
the current one at the last filled frame, samples the actions and plays the argmax of the
one-hot at the current frame; ``evaluate_policy`` plays 20 seeded CartPole-v1 episodes in
lock-step. Reported: action accuracy on held-out rollout windows (against the data's actions,
whose ceiling is below 1 since some were random, and against the heuristic the data was played
with), mean episode return of the learned policy, a seeded random policy and the heuristic
itself (the same ``evaluate_policy`` and env seeds; the learned policy's returns also as
``learned_returns.json``), and a PCA picture of the plan field coloured by pole angle. The
trained model is saved with ``save_pretrained`` to ``<out>/pretrained``, so
``canvas-engineering rollout --pretrained <out>/pretrained --env CartPole-v1`` plays it again.

    python examples/cartpole_control.py [--quick] [--out DIR]
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Example, fit, format_table, pyplot

NAME = "cartpole_control"
FULL = {
    "steps": 1500, "n_train": 2048, "n_test": 128, "batch_size": 32, "depth": 3, "d_model": 64,
    "inference_steps": 8, "episodes": 20, "max_episode_steps": 500,
}
QUICK = {
    "steps": 20, "n_train": 64, "n_test": 16, "batch_size": 16, "depth": 1, "d_model": 32,
    "inference_steps": 2, "episodes": 2, "max_episode_steps": 25,
}
FRAMES, PLAN_WIDTH, RANDOM_ACTION_PROB = 8, 2, 0.3


def plan_schema(dm: Any, plan_width: int = PLAN_WIDTH):
    """Return the datamodule's canvas plus a latent ``plan`` column block; observations as context."""
    from canvas_engineering import CanvasLayout, CanvasSchema, CanvasTopology, Connection, RegionSpec

    base = dm.schema.layout
    regions = dict(base.regions)
    regions["obs"] = dataclasses.replace(regions["obs"], is_output=False)  # given, never noised
    regions["plan"] = RegionSpec((0, base.T, 0, 1, base.W, base.W + plan_width), is_output=False)
    layout = CanvasLayout(T=base.T, H=1, W=base.W + plan_width, d_model=base.d_model, regions=regions, t_current=0)
    same_frame = [
        ("plan", "obs"), ("action", "obs"), ("action", "plan"),
        ("reward", "obs"), ("reward", "action"), ("reward", "plan"),
    ]
    topology = CanvasTopology(
        [
            *CanvasTopology.causal_temporal(list(regions)).connections,
            *(Connection(src, dst, t_src=0, t_dst=0) for src, dst in same_frame),
        ]
    )
    return CanvasSchema(layout, topology, metadata={"example": NAME, "plan_width": plan_width})


class LastBlockOutput:
    """Forward hook keeping the last output of the backbone's final block (hidden canvas tokens)."""

    def __init__(self, model: Any) -> None:
        self.value: torch.Tensor | None = None
        self.handle = model.backbone.blocks[-1].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.value = (output[0] if isinstance(output, tuple) else output).detach()

    def remove(self) -> None:
        """Detach the hook from the model."""
        self.handle.remove()


@torch.no_grad()
def held_out_accuracy(model: Any, dm: Any, steps: int, seed: int) -> dict[str, Any]:
    """Sample every test window's actions; accuracy vs the data and vs the heuristic; plan tokens."""
    from canvas_engineering.datamodules.cartpole import OBS_SCALE, heuristic_action

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    hook = LastBlockOutput(model)
    plan_idx = model.layout.region_indices("plan")
    right = agree = total = 0
    plans, angles, leans, chosen = [], [], [], []
    try:
        for batch in dm.test_dataloader():
            pred = model.sample(batch, num_inference_steps=steps, generator=gen)["action"].argmax(-1)  # (B, T)
            data = batch["action"].argmax(-1)
            raw = batch["obs"].numpy() * OBS_SCALE  # un-normalised observations
            expert = torch.tensor([[heuristic_action(o) for o in window] for window in raw])
            right += int((pred == data).sum())
            agree += int((pred == expert).sum())
            total += pred.numel()
            hidden = hook.value[:, plan_idx]  # (B, T * plan_width, d): the last denoising step
            plans.append(hidden.reshape(hidden.shape[0], FRAMES, -1))  # (B, T, plan_width * d)
            angles.append(torch.from_numpy(raw[..., 2]).float())  # (B, T)
            leans.append(torch.from_numpy(raw[..., 2] + 0.5 * raw[..., 3]).float())  # what the heuristic reads
            chosen.append(pred)
    finally:
        hook.remove()
    return {
        "accuracy": right / total,
        "expert_agreement": agree / total,
        "plan": torch.cat(plans),
        "angle": torch.cat(angles),
        "lean": torch.cat(leans),
        "chosen": torch.cat(chosen),
    }


class ScriptedPolicy:
    """A baseline with the policy interface ``evaluate_policy`` plays: seeded random actions or the data's heuristic."""

    observations = ("obs",)

    def __init__(self, kind: str, seed: int) -> None:
        self.kind, self.rng = kind, np.random.default_rng(seed)

    def reset(self, env_ids: Any = None) -> None:
        """Nothing to forget: both act on the current observation only."""

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """Return one action per row of ``observation["obs"]`` (raw CartPole observations)."""
        obs = np.asarray(observation["obs"])
        if self.kind == "random":
            return self.rng.integers(2, size=obs.shape[0])
        from canvas_engineering.datamodules.cartpole import heuristic_action

        return np.array([heuristic_action(o) for o in obs])


def plan_pca(plan: torch.Tensor, angle: torch.Tensor, lean: torch.Tensor) -> dict[str, Any]:
    """PCA of the plan field: ``plan (n, T, D)`` per window and frame; ``angle``, ``lean`` ``(n, T)``.

    Each frame's mean is removed first (the tokens carry their frame's position encoding, which
    would otherwise make the frame index the main component). Returns the first two
    components of every (window, frame), their share of the variance and their correlations
    with the pole angle and with the heuristic's lean signal ``theta + 0.5 * theta_dot``.
    """
    x = (plan - plan.mean(0, keepdim=True)).flatten(0, 1)  # (n * T, D)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    coords = x @ vh[:2].T  # (n * T, 2)

    def corr(y: torch.Tensor) -> list[float]:
        return [float(torch.corrcoef(torch.stack([coords[:, k], y.flatten()]))[0, 1]) for k in range(2)]

    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    return {"coords": coords, "explained": explained, "angle_corr": corr(angle), "lean_corr": corr(lean)}


def pca_figure(pca: dict[str, Any], angle: torch.Tensor, chosen: torch.Tensor):
    """Two scatter panels of the plan field's PCA: coloured by pole angle and by the chosen action."""
    plt = pyplot()
    coords = pca["coords"].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    angle, chosen = angle.flatten(), chosen.flatten()
    degrees = np.degrees(angle.numpy())
    limit = float(np.percentile(np.abs(degrees), 98)) or 1.0  # symmetric colour scale around upright
    sc = axes[0].scatter(coords[:, 0], coords[:, 1], c=degrees, cmap="coolwarm", vmin=-limit, vmax=limit, s=7)
    fig.colorbar(sc, ax=axes[0], label="pole angle (degrees)")
    axes[0].set_title(
        f"plan field PCA, coloured by pole angle (r = {pca['angle_corr'][0]:+.2f} with PC1, "
        f"{pca['angle_corr'][1]:+.2f} with PC2)",
        fontsize=9,
    )
    for action, color, label in ((0, "#4A90D9", "push left"), (1, "#E8734A", "push right")):
        keep = (chosen == action).numpy()
        axes[1].scatter(coords[keep, 0], coords[keep, 1], s=7, color=color, label=label)
    axes[1].set_title("coloured by the sampled action", fontsize=9)
    axes[1].legend(fontsize=8, frameon=False, markerscale=2)
    for ax in axes:
        ax.set_xlabel(f"PC1 ({pca['explained'][0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({pca['explained'][1]:.0%})")
    fig.tight_layout()
    return fig


def returns_figure(returns: dict[str, list[float]], max_steps: int):
    """Episode returns per policy: mean bars with every episode as a dot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = ["#4A90D9", "#95A5A6", "#5CB85C"]
    for k, values in enumerate(returns.values()):
        ax.bar(k, float(np.mean(values)), color=colors[k % 3], alpha=0.6)
        ax.scatter(k + np.linspace(-0.25, 0.25, len(values)), values, color=colors[k % 3], s=10, zorder=3)
    ax.axhline(max_steps, color="k", lw=0.8, ls=":", label=f"episode limit ({max_steps})")
    ax.set_xticks(range(len(returns)), list(returns))
    ax.set_ylabel("episode return (steps balanced)")
    ax.set_title("CartPole-v1: learned canvas policy vs baselines", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train on CartPole rollouts, evaluate the policy in the real env, draw the plan field."""
    ex = Example(NAME, __doc__)
    ex.parser.add_argument("--steps", type=int, default=None, help="training steps")
    ex.parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes per policy")
    args = ex.parse(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("steps", "episodes"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)

    from canvas_engineering.datamodules import CartPoleDataModule

    from canvas_engineering import CanvasModule, CanvasPolicy, compile_topology, evaluate_policy
    from canvas_engineering.viz import layout_figure, mask_figure

    dm = CartPoleDataModule(
        frames=FRAMES, random_action_prob=RANDOM_ACTION_PROB, t_current=0, n_train=cfg["n_train"],
        n_val=cfg["n_test"], n_test=cfg["n_test"], batch_size=cfg["batch_size"], seed=args.seed, d_model=cfg["d_model"],
    )
    schema = plan_schema(dm)
    print(dm.describe())
    print(f"plus a latent 'plan' region of {PLAN_WIDTH} positions per frame: {schema.layout.num_positions} positions")
    model = CanvasModule(
        schema, dm.region_formats, backbone="canvas_dit", backbone_config={"depth": cfg["depth"], "n_heads": 4},
        lr=1e-3, warmup_steps=min(50, cfg["steps"] // 5), num_inference_steps=cfg["inference_steps"],
        # stored with the model: the policy maps raw observations the way the datamodule did
        normalization=dm.normalization,
    )
    print(f"training {cfg['steps']} steps...", flush=True)
    run = fit(model, dm, cfg["steps"])

    held = held_out_accuracy(model, dm, cfg["inference_steps"], args.seed)
    print(f"playing {cfg['episodes']} episodes per policy...", flush=True)
    policies = {
        "learned": CanvasPolicy(model, num_inference_steps=cfg["inference_steps"], seed=args.seed),
        "random": ScriptedPolicy("random", args.seed),
        "heuristic": ScriptedPolicy("heuristic", args.seed),
    }
    evaluations = {
        name: evaluate_policy(
            policy, "CartPole-v1", episodes=cfg["episodes"], seed=args.seed + 1000,
            max_episode_steps=cfg["max_episode_steps"], progress=False,
        )
        for name, policy in policies.items()
    }
    evaluations["learned"].to_json(args.out / "learned_returns.json")
    # the trained model as a folder: `canvas-engineering rollout --pretrained <out>/pretrained --env CartPole-v1`
    pretrained = model.save_pretrained(args.out / "pretrained", metrics={"held_out_accuracy": held["accuracy"]})
    returns = {name: evaluation.returns for name, evaluation in evaluations.items()}
    pca = plan_pca(held["plan"], held["angle"], held["lean"])

    ex.save(pca_figure(pca, held["angle"], held["chosen"]), "plan_pca.png")
    ex.save(returns_figure(returns, cfg["max_episode_steps"]), "returns.png")
    ex.save(layout_figure(schema.layout), "layout.png")
    ex.save(mask_figure(compile_topology(schema.layout, schema.topology)), "attention_mask.png")

    mean = {k: float(np.mean(v)) for k, v in returns.items()}
    std = {k: float(np.std(v)) for k, v in returns.items()}
    ceiling = 1 - RANDOM_ACTION_PROB / 2
    lines = [
        f"canvas DiT depth {cfg['depth']}, d_model {cfg['d_model']}, {cfg['steps']} steps x batch {cfg['batch_size']} "
        f"on {cfg['n_train']} windows of {FRAMES} steps ({run['seconds']:.0f} s); "
        f"{cfg['inference_steps']} denoising steps",
        "",
        f"held-out action accuracy ({cfg['n_test']} test windows x {FRAMES} steps):",
        f"  vs the data's actions:    {held['accuracy']:.3f}  "
        f"(ceiling ~{ceiling:.2f}: {RANDOM_ACTION_PROB:.0%} of them were random)",
        f"  vs the heuristic expert:  {held['expert_agreement']:.3f}",
        "",
        f"episode return over {cfg['episodes']} episodes "
        f"(CartPole-v1, limit {cfg['max_episode_steps']} steps, same env seeds):",
        *format_table(
            ["policy", "mean return", "std", "min", "max"],
            [[k, mean[k], std[k], min(v), max(v)] for k, v in returns.items()],
        ),
        "",
        f"plan field PCA: PC1/PC2 explain {pca['explained'][0]:.0%}/{pca['explained'][1]:.0%} of the variance; "
        f"correlation with pole angle {pca['angle_corr'][0]:+.2f} (PC1), {pca['angle_corr'][1]:+.2f} (PC2); "
        f"with theta + 0.5 theta_dot (what the heuristic acts on) {pca['lean_corr'][0]:+.2f} (PC1), "
        f"{pca['lean_corr'][1]:+.2f} (PC2)",
    ]
    ex.report("CartPole Control: learned canvas policy", lines)
    return {
        "accuracy": held["accuracy"],
        "expert_agreement": held["expert_agreement"],
        "learned_return": mean["learned"],
        "random_return": mean["random"],
        "heuristic_return": mean["heuristic"],
        "returns": returns,
        "plan_explained": pca["explained"],
        "plan_angle_corr": pca["angle_corr"],
        "plan_lean_corr": pca["lean_corr"],
        "train_seconds": run["seconds"],
        "evaluation": evaluations["learned"].to_dict(),
        "pretrained": str(pretrained),
        "figures": dict(ex.figures),
        "seconds": ex.elapsed(),
    }


if __name__ == "__main__":
    main()
