"""``canvas-engineering rollout``: play a trained model in a gymnasium environment and report its returns.

    canvas-engineering rollout --pretrained DIR --env CartPole-v1 --episodes 20 [--seed S]
        [--output FILE.json] [--video DIR] [--plot FILE.png] [--chunk-size K] [--execute-steps N]

Loads the model (``--pretrained``: a ``save_pretrained`` folder; ``--ckpt``: a Lightning
checkpoint), wraps it in a :class:`~canvas_engineering.CanvasPolicy`, runs
:func:`~canvas_engineering.evaluate_policy`, prints the mean and spread of the returns and
writes them as JSON. A bad model file, environment or argument prints one ``error:`` line and
exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_rollout_parser", "run_rollout"]


def add_rollout_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``rollout`` sub-command to ``sub`` (an ``add_subparsers`` result)."""
    parser = sub.add_parser("rollout", help="play a trained model in a gymnasium environment; report its returns")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained", help="a folder written by CanvasModule.save_pretrained")
    source.add_argument("--ckpt", help="a Lightning checkpoint (.ckpt) of a CanvasModule")
    parser.add_argument("--env", required=True, help="gymnasium environment id, e.g. CartPole-v1")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to play (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="episode e starts from reset(seed=SEED + e)")
    parser.add_argument("--max-episode-steps", type=int, default=None, help="episode length limit")
    parser.add_argument("--num-envs", type=int, default=None, help="env copies played in lock-step")
    parser.add_argument("--action", default=None, help="the action region (default: 'action')")
    parser.add_argument("--observation", action="append", default=None, help="an observed region (repeatable)")
    parser.add_argument("--chunk-size", type=int, default=1, help="actions taken from each sample")
    parser.add_argument("--execute-steps", type=int, default=None, help="actions executed before re-planning")
    parser.add_argument("--inference-steps", type=int, default=None, help="denoising steps per sample")
    parser.add_argument("--deterministic", action="store_true", help="the same noise for every sample")
    parser.add_argument("--output", default=None, help="JSON file for the returns (default: print only)")
    parser.add_argument("--video", default=None, help="folder for the first episode's video (or PNG frames)")
    parser.add_argument("--plot", default=None, help="PNG file for the summary plot")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run_rollout)
    return parser


def run_rollout(args: argparse.Namespace) -> int:
    """Run ``rollout``; return the exit status (2 with one ``error:`` line for a bad input)."""
    from canvas_engineering.errors import CanvasError
    from canvas_engineering.policy import CanvasPolicy, evaluate_policy

    options = {
        "action": args.action,
        "observations": args.observation,
        "chunk_size": args.chunk_size,
        "execute_steps": args.execute_steps,
        "num_inference_steps": args.inference_steps,
        "deterministic": args.deterministic,
        "seed": args.seed,
    }
    try:
        if args.pretrained is not None:
            policy = CanvasPolicy.from_pretrained(args.pretrained, **options)
        else:
            policy = CanvasPolicy.from_checkpoint(args.ckpt, **options)
        result = evaluate_policy(
            policy,
            args.env,
            episodes=args.episodes,
            seed=args.seed,
            num_envs=args.num_envs,
            max_episode_steps=args.max_episode_steps,
            video=args.video,
            plot=args.plot,
            progress=not args.no_progress,
        )
        written = result.to_json(args.output) if args.output else None
    except (CanvasError, OSError) as err:
        print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"returns: {', '.join(f'{r:g}' for r in result.returns)}")
    for path in [written, result.plot, *result.videos]:
        if path is not None:
            print(f"wrote {Path(path)}")
    return 0
