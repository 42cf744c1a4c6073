"""Wiring of a program: the default topology of its families, and cycles among its connections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from canvas_engineering.declare.topology import CanvasTopology, Connection, TemporalFill
from canvas_engineering.program.vocabulary import FAMILIES

__all__ = ["family_wiring", "find_cycle"]


def family_wiring(regions: Sequence[str], families: Mapping[str, str], temporal_fill: TemporalFill) -> CanvasTopology:
    """Build the default topology of regions by family (see :meth:`CanvasProgram.from_families`).

    Every region reads itself at its own frame (``t_src=0, t_dst=0``) and at the previous
    frame (``t_dst=-1``), and reads at its own frame every region of the families its family
    reads (:data:`~canvas_engineering.program.FAMILIES`).

    Args:
        regions: the layout's region names, in order.
        families: region name -> family, for every region in ``regions`` (already checked).
        temporal_fill: fill mode of every generated connection (slow regions).

    Returns:
        The topology, connections grouped per reading region in layout order.

    """
    conns = []
    for name in regions:
        conns.append(Connection(name, name, t_src=0, t_dst=0, temporal_fill=temporal_fill))
        conns.append(Connection(name, name, t_src=0, t_dst=-1, temporal_fill=temporal_fill))
        reads = FAMILIES[families[name]].reads
        for other in regions:
            if other != name and families[other] in reads:
                conns.append(Connection(name, other, t_src=0, t_dst=0, temporal_fill=temporal_fill))
    return CanvasTopology(conns)


def find_cycle(regions: Sequence[str], edges: Mapping[str, Sequence[tuple[str, int]]]) -> list[int] | None:
    """Find the first cycle of a directed graph of regions, as the indices of its edges in order.

    Args:
        regions: every node, in the order the search starts from them.
        edges: node -> ``(next node, edge index)`` pairs.

    Returns:
        The edge indices along the first cycle found (depth first), or ``None``.

    """
    state = dict.fromkeys(regions, 0)  # 0 new, 1 on the stack, 2 done
    path: list[tuple[str, int]] = []  # (region, edge index that reached it)

    def visit(node: str) -> list[int] | None:
        state[node] = 1
        for nxt, i in edges.get(node, []):
            if state[nxt] == 1:  # back edge: the cycle runs from nxt's place on the path
                start = next(k for k, (r, _) in enumerate(path) if r == nxt)
                return [c for _, c in path[start + 1 :]] + [i]
            if state[nxt] == 0:
                path.append((nxt, i))
                found = visit(nxt)
                if found:
                    return found
                path.pop()
        state[node] = 2
        return None

    for region in regions:
        if state[region] == 0:
            path[:] = [(region, -1)]
            cycle = visit(region)
            if cycle:
                return cycle
    return None
