"""The seed's example canvases, ready to use (robot manipulation, computer use, multi-robot)."""

from __future__ import annotations

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.topology import CanvasTopology, Connection

__all__ = ["PRESETS", "computer_use_layout", "multi_robot_schema", "robot_manipulation_schema"]


def robot_manipulation_schema() -> CanvasSchema:
    """Return the seed's robot-manipulation canvas (5x8x8, 320 positions) with a causal-temporal topology."""
    layout = CanvasLayout(
        T=5, H=8, W=8, d_model=256,
        regions={
            "visual": (0, 5, 0, 6, 0, 6),  # video patches
            "action": (0, 5, 6, 7, 0, 1),  # per-frame actions
            "reward": (2, 3, 7, 8, 0, 1),  # scalar reward
        },
        t_current=2,
    )
    topology = CanvasTopology.causal_temporal(list(layout.regions))
    return CanvasSchema(layout, topology, metadata={"preset": "robot_manipulation"})


def computer_use_layout() -> CanvasLayout:
    """Return the seed's computer-use canvas (16x32x32, 16,384 positions) with region frequencies."""
    return CanvasLayout(
        T=16, H=32, W=32, d_model=768,
        regions={
            "screen": (0, 16, 0, 24, 0, 24),
            "mouse": RegionSpec(bounds=(0, 16, 24, 26, 0, 4), loss_weight=2.0),
            "keyboard": (0, 16, 26, 28, 0, 4),
            "llm": (0, 16, 28, 32, 0, 8),
        },
    )


def multi_robot_schema() -> CanvasSchema:
    """Two robots and a shared task region, wired as in the seed's connectivity example."""
    layout = CanvasLayout(
        T=4, H=8, W=8, d_model=128,
        regions={
            "robot1_cam": (0, 4, 0, 4, 0, 4),
            "robot2_cam": (0, 4, 0, 4, 4, 8),
            "robot1_action": (0, 4, 4, 5, 0, 2),
            "robot2_action": (0, 4, 4, 5, 2, 4),
            "shared_task": (0, 4, 5, 6, 0, 4),
        },
        t_current=1,
    )
    c = Connection
    topology = CanvasTopology([
        c("robot1_cam", "robot1_cam"), c("robot1_action", "robot1_action"),
        c("robot2_cam", "robot2_cam"), c("robot2_action", "robot2_action"),
        c("shared_task", "shared_task"),
        c("robot1_action", "robot1_cam"), c("robot2_action", "robot2_cam"),
        c("robot1_cam", "robot2_cam", weight=0.5), c("robot2_cam", "robot1_cam", weight=0.5),
        c("shared_task", "robot1_cam"), c("shared_task", "robot2_cam"),
        c("robot1_action", "shared_task"), c("robot2_action", "shared_task"),
    ])
    return CanvasSchema(layout, topology, metadata={"preset": "multi_robot"})


#: Named schemas usable wherever a schema is expected (e.g. ``CanvasModule(schema="robot_manipulation")``).
PRESETS = {
    "robot_manipulation": robot_manipulation_schema,
    "multi_robot": multi_robot_schema,
}
