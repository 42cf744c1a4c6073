"""Benchmark: topology compile time and peak memory (dense mask vs block plan).

Each case runs in its own subprocess so its peak RSS is its own. Baseline in the same run:
allocating and filling an N x N float32 tensor, the floor of any dense mask.

    python benchmarks/compile.py                 # print the table
    python benchmarks/compile.py --write-readme  # also update README.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_note, peak_rss_bytes, rss_bytes, time_it, write_readme_section

CANVASES = ("robot", "computer")
TOPOLOGIES = ("causal_temporal", "hub_spoke10")
OUTPUTS = ("block plan", "dense mask", "baseline: fill NxN")


def build(canvas: str, topology: str):
    """Return the layout and topology of a ``canvas`` preset wired by ``topology``."""
    from canvas_engineering import CanvasTopology, Connection
    from canvas_engineering.typed.presets import computer_use_layout, robot_manipulation_schema

    layout = robot_manipulation_schema().layout if canvas == "robot" else computer_use_layout()
    names = list(layout.regions)
    if topology == "causal_temporal":
        return layout, CanvasTopology.causal_temporal(names)
    # 10 connections: hub self + hub<->3 spokes (6) + 3 spoke selves, with a temporal edge
    hub, spokes = names[0], names[1:4]
    conns = [Connection(hub, hub, t_src=0, t_dst=0)]
    for s in spokes:
        conns += [Connection(hub, s, weight=0.5), Connection(s, hub, t_src=0, t_dst=-1), Connection(s, s)]
    return layout, CanvasTopology(conns[:10])


def run_case(canvas: str, topology: str, output: str, repeat: int) -> dict:
    """Time compiling one case to one ``output``; return its timings and peak memory."""
    import torch

    from canvas_engineering import compile_topology

    layout, topo = build(canvas, topology)
    n = layout.num_positions
    if output == "block plan":
        fn = lambda: compile_topology(layout, topo).block_view(128)  # noqa: E731
    elif output == "dense mask":
        fn = lambda: compile_topology(layout, topo).dense_weights()  # noqa: E731
    else:
        fn = lambda: torch.ones(n, n)  # noqa: E731
    base = rss_bytes()
    first = fn()
    peak = peak_rss_bytes() - base
    del first
    t_min, t_med = time_it(fn, repeat=repeat, warmup=0)
    return {
        "canvas": canvas, "N": n, "topology": topology, "output": output, "min": t_min, "median": t_med, "peak": peak
    }


def main() -> None:
    """Run every case (each in a fresh process) and print or write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, repeat=args.repeat)))
        return
    rows = []
    for canvas in CANVASES:
        for topology in TOPOLOGIES:
            for output in OUTPUTS:
                if output.startswith("baseline") and topology != TOPOLOGIES[0]:
                    continue
                out = subprocess.run(
                    [sys.executable, __file__, "--case", canvas, topology, output, "--repeat", str(args.repeat)],
                    check=True, capture_output=True, text=True,
                ).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{r['canvas']:>8} N={r['N']:>6} {r['topology']:>16} {r['output']:>18}: "
                      f"min {r['min'] * 1e3:9.2f} ms  median {r['median'] * 1e3:9.2f} ms  "
                      f"peak {r['peak'] / 2**20:8.1f} MiB",
                      flush=True)
    table = [
        "| canvas | N | topology | output | min | median | peak memory |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        topo = "-" if r["output"].startswith("baseline") else r["topology"]
        table.append(
            f"| {r['canvas']} | {r['N']:,} | {topo} | {r['output']} | {r['min'] * 1e3:.2f} ms | "
            f"{r['median'] * 1e3:.2f} ms | {r['peak'] / 2**20:.1f} MiB |"
        )
    text = "\n".join(table) + f"\n\nMachine: {machine_note()}. `python benchmarks/compile.py --write-readme`."
    print(text)
    if args.write_readme:
        write_readme_section("compile", text)


if __name__ == "__main__":
    main()
