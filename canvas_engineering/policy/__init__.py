"""Policies: a trained canvas model acting in environments, and its evaluation in gymnasium.

:class:`CanvasPolicy` wraps a :class:`~canvas_engineering.CanvasModule` (``reset``, ``act``
with a rolling context window and action chunking, ``imagine``); :func:`evaluate_policy`
plays it in a gymnasium environment and returns a :class:`PolicyEvaluation`. This layer sits
above training and the datamodules and below the CLI (``canvas-engineering rollout``).

.. versionadded:: 0.1.0
"""

from canvas_engineering.errors import PolicyError
from canvas_engineering.policy.canvas_policy import CanvasPolicy
from canvas_engineering.policy.evaluation import PolicyEvaluation, evaluate_policy
from canvas_engineering.policy.features import FeatureSpec
from canvas_engineering.policy.spaces import to_env_action

__all__ = ["CanvasPolicy", "FeatureSpec", "PolicyError", "PolicyEvaluation", "evaluate_policy", "to_env_action"]
