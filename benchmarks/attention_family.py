"""The canvases ``benchmarks/attention.py`` measures: the seed's presets and a seeded random family.

Random cases are multi-region robot-like canvases: one or two camera regions over most rows,
3-8 regions in all, small regions of period 1, 2 or 4 packed into the remaining rows with
unassigned cells between them, and connections of every kind the seed documents (same-frame
and previous-frame self-attention, dense-in-time regions, cross reads at offsets 0, -1, -2,
one hub region reading every other region over all frames, weights 0.5, 1 and 2). A fixed
seed makes the family reproducible.

    python benchmarks/attention_family.py     # prints each case's regions and allowed share
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FAMILY_SEED = 20261201
#: random cases per size
PER_SIZE = 4
#: (T, side) per size: 16 x 16 x 16 = 4,096 positions, 16 x 32 x 32 = 16,384
SIZES = {4096: (16, 16), 16384: (16, 32)}


@dataclass(frozen=True)
class Case:
    """One benchmark canvas and the attention module shape it runs with."""

    name: str
    layout: object
    topology: object
    batch: int = 2
    d_model: int = 128
    heads: int = 2


def _robot16() -> tuple[object, object]:
    """Return the canvas of issue 12: 16 frames of 16 x 16, four regions, nine connections."""
    from canvas_engineering import CanvasLayout, CanvasTopology, Connection

    layout = CanvasLayout(
        T=16, H=16, W=16, d_model=128,
        regions={
            "visual": (0, 16, 0, 14, 0, 16), "action": (0, 16, 14, 15, 0, 8),
            "proprio": (0, 16, 15, 16, 0, 4), "reward": (0, 16, 15, 16, 4, 5),
        },
    )
    c = Connection
    topology = CanvasTopology([
        c("visual", "visual", t_src=0, t_dst=0), c("visual", "visual", t_src=0, t_dst=-1),
        c("visual", "action", t_src=0, t_dst=-1), c("action", "action"),
        c("action", "visual", t_src=0, t_dst=0), c("action", "proprio", t_src=0, t_dst=-1),
        c("proprio", "proprio", t_src=0, t_dst=0), c("reward", "visual", weight=0.5),
        c("reward", "action", t_src=0, t_dst=0),
    ])
    return layout, topology


def random_case(rng: random.Random, T: int, side: int) -> tuple[object, object]:
    """One random multi-region canvas and topology (see module docstring)."""
    from canvas_engineering import CanvasLayout, CanvasTopology, Connection, RegionSpec

    H = W = side
    n_regions = rng.randint(3, 8)
    cam_rows = rng.randint(int(0.55 * H), int(0.8 * H))
    n_cams = 2 if n_regions >= 5 and rng.random() < 0.5 else 1
    regions: dict[str, object] = {}
    for i in range(n_cams):
        regions[f"cam{i}"] = (0, T, 0, cam_rows, i * W // n_cams, (i + 1) * W // n_cams)
    row, col = cam_rows, 0
    periods = {}
    for i in range(n_regions - n_cams):
        width = rng.randint(1, max(1, W // 3)) if i else 1  # the first small region is the 1-cell hub
        col += rng.randint(0, 3)  # unassigned cells between regions
        if col + width > W:
            row, col = row + 1, rng.randint(0, 2)
        if row >= H or col + width > W:
            break
        period = rng.choice([1, 1, 2, 4])
        frames = (T - 1) // period + 1  # real frames 0, p, 2p, ... below T
        regions[f"s{i}"] = RegionSpec(bounds=(0, frames, row, row + 1, col, col + width), period=period)
        periods[f"s{i}"] = period
        col += width
    layout = CanvasLayout(T=T, H=H, W=W, d_model=128, regions=regions)
    cams = [n for n in regions if n.startswith("cam")]
    small = [n for n in regions if n.startswith("s")]
    hub, others = small[0], small[1:]
    weights = [1.0, 1.0, 0.5, 2.0]
    c = Connection
    conns = []
    for cam in cams:
        conns.append(c(cam, cam, t_src=0, t_dst=0))
        if rng.random() < 0.7:
            conns.append(c(cam, cam, t_src=0, t_dst=-1))
        if rng.random() < 0.4:
            conns.append(c(cam, cam, t_src=0, t_dst=-2, weight=rng.choice(weights)))
        if others and rng.random() < 0.5:
            conns.append(c(cam, rng.choice(others), t_src=0, t_dst=-1, weight=rng.choice(weights)))
    if len(cams) == 2:
        conns += [c(cams[0], cams[1], t_src=0, t_dst=0, weight=0.5), c(cams[1], cams[0], t_src=0, t_dst=0, weight=0.5)]
    for name in others:
        if rng.random() < 0.4:
            conns.append(c(name, name))  # dense in time
        else:
            conns.append(c(name, name, t_src=0, t_dst=0))
        if rng.random() < 0.6:
            conns.append(c(name, rng.choice(cams), t_src=0, t_dst=rng.choice([0, 0, -1]), weight=rng.choice(weights)))
        if len(others) > 1 and rng.random() < 0.5:
            dst = rng.choice([o for o in others if o != name])
            conns.append(c(name, dst, t_src=0, t_dst=rng.choice([-1, -2]), weight=rng.choice(weights)))
    for dst in cams + others:  # the hub reads everything over all frames
        conns.append(c(hub, dst, weight=rng.choice(weights)))
    return layout, CanvasTopology(conns)


def family() -> dict[str, Case]:
    """Every benchmark case, by name: presets at their own sizes, the issue's canvas, the random family."""
    from canvas_engineering import CanvasTopology
    from canvas_engineering.typed.presets import computer_use_layout, multi_robot_schema, robot_manipulation_schema

    cases = {}
    robot = robot_manipulation_schema()
    cases["preset robot"] = Case("preset robot", robot.layout, robot.topology, d_model=256, heads=4)
    multi = multi_robot_schema()
    cases["preset multi-robot"] = Case("preset multi-robot", multi.layout, multi.topology)
    computer = computer_use_layout()
    cases["preset computer-use"] = Case(
        "preset computer-use", computer, CanvasTopology.causal_temporal(list(computer.regions))
    )
    layout, topology = _robot16()
    cases["robot 16x16x16"] = Case("robot 16x16x16", layout, topology)
    rng = random.Random(FAMILY_SEED)
    for n, (T, side) in SIZES.items():
        for i in range(PER_SIZE):
            layout, topology = random_case(rng, T, side)
            name = f"random {n} #{i}"
            cases[name] = Case(name, layout, topology)
    return cases


def main() -> None:
    """Print every case: positions, regions (period), connections, allowed share."""
    from canvas_engineering.compilation.compiler import compile_topology

    for name, case in family().items():
        plan = compile_topology(case.layout, case.topology)
        n = case.layout.num_positions
        regions = ", ".join(f"{r}(p{s.period})" for r, s in case.layout.regions.items())
        print(f"{name:>22}: N {n:>6,} allowed {plan.num_allowed_pairs / n**2:6.1%} "
              f"{len(case.topology.connections):>2} connections; {regions}")


if __name__ == "__main__":
    main()
