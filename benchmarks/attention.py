"""Benchmark: CanvasAttention against dense masked SDPA, over a family of canvases.

The family (``benchmarks/attention_family.py``): the seed's presets at their own sizes (robot
manipulation, multi-robot with its hub, computer use), the 16 x 16 x 16 robot-shaped canvas of
issue 12, and a seeded random family of multi-region canvases at 4,096 and 16,384 positions
(3-8 regions, unassigned cells, periods 1-4, temporal offsets, dense-in-time regions, a hub
reader, weights other than 1). Per case and mode (forward, forward+backward), each
implementation runs in its own process: the module with its projections (CanvasAttention,
kernel ``auto``) against the same projections around dense masked SDPA over the whole
canvas, timed with ``torch.utils.benchmark`` (min and median). Useful work is the allowed
pairs' FLOPs (4 * pairs * d_model forward, 3x that for forward+backward) over the measured
time, as a share of this machine's fp32 matmul rate measured in the same run. Build time is
compiling the plan plus constructing CanvasAttention plus everything it precomputes for the
CPU (partition plans and their device views), plugins already loaded.

    python benchmarks/attention.py [--write-readme] [--repeat 5] [--cases NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_note, peak_rss_bytes, rss_bytes, time_it, write_readme_section
from attention_family import family

MODES = ("fwd", "fwd+bwd")
IMPLS = ("canvas", "dense")


def matmul_rate() -> float:
    """Best fp32 FLOP/s of a 2048^3 matmul (measured now, in this process)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t_min, _ = time_it(lambda: a @ b, repeat=7, warmup=2)
    return 2 * 2048**3 / t_min


def build_seconds(case, repeat: int = 5) -> tuple[float, float]:
    """Min and median seconds to compile the plan, build CanvasAttention and precompute its CPU views.

    Every build starts from the layout and topology (caches live on the plan's masks, so
    nothing carries over); plugin loading is once per process and not counted.
    """
    import statistics

    import torch

    from canvas_engineering import CanvasAttention
    from canvas_engineering.compilation.compiler import compile_topology
    from canvas_engineering.plugin_host.host import get_registry

    get_registry().attention_types.names()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        plan = compile_topology(case.layout, case.topology)
        attn = CanvasAttention(plan, d_model=case.d_model, n_heads=case.heads)
        for group in attn.groups:
            group.mask.device_partitions("cpu", torch.float32)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def run(name: str, impl: str, mode: str, repeat: int) -> dict:
    """Time one case with one implementation and mode; return its timings and memory."""
    import torch
    import torch.nn.functional as F

    from canvas_engineering import CanvasAttention

    torch.manual_seed(0)
    case = family()[name]
    build = build_seconds(case)
    attn = CanvasAttention(case.layout, case.topology, d_model=case.d_model, n_heads=case.heads)
    n, B, d = case.layout.num_positions, case.batch, case.d_model
    pairs = attn.plan.num_allowed_pairs
    x = torch.randn(B, n, d, requires_grad=mode == "fwd+bwd")
    if impl == "dense":
        allowed = attn.plan.dense_allowed()
        lonely = ~allowed.any(1)
        allowed[lonely, lonely] = True
        op = attn.groups[0].op  # same projections; the whole canvas in one masked SDPA call

        def module() -> torch.Tensor:
            q, k, v = op.qkv(x, x)
            return op.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    else:
        def module() -> torch.Tensor:
            return attn(x)

    def step() -> None:
        if mode == "fwd":
            with torch.no_grad():
                module()
        else:
            module().square().mean().backward()

    base = rss_bytes()
    step()
    peak = peak_rss_bytes() - base
    t_min, t_med = time_it(step, repeat=repeat, warmup=1)
    flops = 4 * pairs * d * B * (3 if mode == "fwd+bwd" else 1)
    return {"case": name, "N": n, "impl": impl, "mode": mode, "min": t_min, "median": t_med, "peak": peak,
            "flops": flops, "pairs": pairs, "build": build[0], "build_median": build[1],
            "regions": len(case.layout.regions),
            "connections": len(case.topology.connections)}


def main() -> None:
    """Run every case (each measurement in a fresh process) and print or write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(family()))
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(*args.one, repeat=args.repeat)))
        return
    rate = matmul_rate()
    rows = {}
    for name in args.cases:
        for mode in MODES:
            for impl in IMPLS:
                big = impl == "dense" and family()[name].layout.num_positions > 8192
                repeat = min(args.repeat, 3) if big else args.repeat  # the dense baseline takes seconds here
                out = subprocess.run([sys.executable, __file__, "--one", name, impl, mode, "--repeat", str(repeat)],
                                     check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                r["useful"] = r["flops"] / r["min"] / rate
                rows[(name, impl, mode)] = r
                print(f"{name:>22} {impl:>6} {mode:>8}: min {r['min'] * 1e3:9.1f} ms "
                      f"median {r['median'] * 1e3:9.1f} ms useful {r['useful']:6.1%} "
                      f"build {r['build'] * 1e3:6.1f} / {r['build_median'] * 1e3:6.1f} ms", flush=True)
    table = [
        "| canvas | N | regions / connections | allowed pairs | mode | CanvasAttention min / median "
        "| dense masked SDPA min / median | speed-up (min) | useful work (canvas / dense) | build min / median |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name in args.cases:
        for mode in MODES:
            c, dn = rows[(name, "canvas", mode)], rows[(name, "dense", mode)]
            table.append(
                f"| {name} | {c['N']:,} | {c['regions']} / {c['connections']} | {c['pairs'] / c['N'] ** 2:.1%} | "
                f"{mode} | {c['min'] * 1e3:.1f} / {c['median'] * 1e3:.1f} ms | "
                f"{dn['min'] * 1e3:.1f} / {dn['median'] * 1e3:.1f} ms | {dn['min'] / c['min']:.1f}x | "
                f"{c['useful']:.0%} / {dn['useful']:.0%} | {c['build'] * 1e3:.1f} / {c['build_median'] * 1e3:.1f} ms |"
            )
    text = "\n".join(table) + (
        f"\n\nModule with projections, batch 2 (preset robot d_model 256 / 4 heads, others 128 / 2). "
        f"fp32 matmul rate measured in the same run: {rate / 1e9:.0f} GFLOP/s. Machine: {machine_note()}. "
        "`python benchmarks/attention.py --write-readme`."
    )
    print(text)
    if args.write_readme:
        write_readme_section("attention", text)


if __name__ == "__main__":
    main()
