"""Benchmark: CanvasAttention against dense masked SDPA over the same positions.

Cases: the seed's robot canvas (320 positions) and a 4,096-position canvas (16 frames of
16 x 16, one region) with causal_temporal, and the 16,384-position computer-use canvas.
For each: forward and forward+backward time (min and median), peak memory (own subprocess
per measurement), and the share of this machine's fp32 matmul rate reached by the useful
work (allowed pairs only: 4 * pairs * d FLOPs forward, 3x that for forward+backward).
"attention core" times the kernel alone on projected q, k, v; "module" includes projections.

    python benchmarks/attention.py [--write-readme] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_note, peak_rss_bytes, rss_bytes, time_it, write_readme_section

CASES = {
    "robot": dict(batch=2, d_model=256, heads=4),
    "grid4096": dict(batch=2, d_model=128, heads=2),
    "computer": dict(batch=2, d_model=128, heads=2),
}


def build_layout(case: str):
    """Return the layout and topology of a benchmark ``case``."""
    from canvas_engineering import CanvasLayout, CanvasTopology
    from canvas_engineering.typed.presets import computer_use_layout, robot_manipulation_schema

    if case == "robot":
        layout = robot_manipulation_schema().layout
    elif case == "grid4096":
        layout = CanvasLayout(T=16, H=16, W=16, d_model=128, regions={"video": (0, 16, 0, 16, 0, 16)})
    else:
        layout = computer_use_layout()
    return layout, CanvasTopology.causal_temporal(list(layout.regions))


def matmul_rate() -> float:
    """Best fp32 GFLOP/s of a 2048^3 matmul (measured now, in this process)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t_min, _ = time_it(lambda: a @ b, repeat=7, warmup=2)
    return 2 * 2048**3 / t_min


def run(case: str, impl: str, mode: str, repeat: int) -> dict:
    """Time one ``case`` with one implementation and mode; return its timings and memory."""
    import torch
    import torch.nn.functional as F

    from canvas_engineering import CanvasAttention
    from canvas_engineering.attention.kernels import softmax_attention

    torch.manual_seed(0)
    cfg = CASES[case]
    layout, topo = build_layout(case)
    attn = CanvasAttention(layout, topo, d_model=cfg["d_model"], n_heads=cfg["heads"], kernel="tiled")
    group = attn.groups[0]
    n, B, d, H = layout.num_positions, cfg["batch"], cfg["d_model"], cfg["heads"]
    pairs = attn.plan.num_allowed_pairs
    x = torch.randn(B, n, d, requires_grad=mode == "fwd+bwd")
    nq = group.mask.num_queries
    q = torch.randn(B, H, nq, d // H, requires_grad=mode == "fwd+bwd")
    k = torch.randn_like(q, requires_grad=mode == "fwd+bwd")
    v = torch.randn_like(q, requires_grad=mode == "fwd+bwd")
    if impl.startswith("dense"):
        allowed = attn.plan.dense_allowed()
        op = group.op
        lonely = ~allowed.any(1)
        allowed[lonely, lonely] = True

        def module() -> torch.Tensor:
            qq, kk, vv = op.qkv(x, x)
            return op.merge(F.scaled_dot_product_attention(qq, kk, vv, attn_mask=allowed))

        g_allowed = group.mask.dense_allowed()

        def core() -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=g_allowed)
    else:
        def module() -> torch.Tensor:
            return attn(x)

        def core() -> torch.Tensor:
            return softmax_attention(q, k, v, group.mask, kernel="tiled")

    fn = core if impl.endswith("core") else module

    def step() -> None:
        if mode == "fwd":
            with torch.no_grad():
                fn()
        else:
            fn().square().mean().backward()

    base = rss_bytes()
    step()
    peak = peak_rss_bytes() - base
    t_min, t_med = time_it(step, repeat=repeat, warmup=1)
    flops = 4 * pairs * d * B * (3 if mode == "fwd+bwd" else 1)
    return {"case": case, "N": n, "impl": impl, "mode": mode, "min": t_min, "median": t_med, "peak": peak,
            "flops": flops, "pairs": pairs}


def main() -> None:
    """Run every case (each in a fresh process) and print or write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(*args.one, repeat=args.repeat)))
        return
    rate = matmul_rate()
    rows = []
    for case in args.cases:
        for impl in ("canvas core", "dense core", "canvas module", "dense module"):
            for mode in ("fwd", "fwd+bwd"):
                if case == "computer" and impl.startswith("dense") and args.repeat > 2:
                    repeat = 2  # the dense baseline is slow here; fewer repeats
                else:
                    repeat = args.repeat
                out = subprocess.run([sys.executable, __file__, "--one", case, impl, mode, "--repeat", str(repeat)],
                                     check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                r["useful"] = r["flops"] / r["min"] / rate
                rows.append(r)
                print(f"{case:>9} {impl:>14} {mode:>8}: "
                      f"min {r['min'] * 1e3:9.1f} ms median {r['median'] * 1e3:9.1f} ms "
                      f"peak {r['peak'] / 2**20:8.1f} MiB useful {r['useful']:6.1%}", flush=True)
    by = {(r["case"], r["impl"], r["mode"]): r for r in rows}
    table = [
        "| canvas | N | allowed pairs | measured | mode | CanvasAttention min / median "
        "| dense masked SDPA min / median | speed-up | useful work (canvas / dense) | peak memory (canvas / dense) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in args.cases:
        for what in ("core", "module"):
            for mode in ("fwd", "fwd+bwd"):
                c, dn = by[(case, f"canvas {what}", mode)], by[(case, f"dense {what}", mode)]
                measured = "attention core" if what == "core" else "module (with projections)"
                table.append(
                    f"| {case} | {c['N']:,} | {c['pairs'] / c['N'] ** 2:.1%} | {measured} | {mode} | "
                    f"{c['min'] * 1e3:.1f} / {c['median'] * 1e3:.1f} ms | "
                    f"{dn['min'] * 1e3:.1f} / {dn['median'] * 1e3:.1f} ms | "
                    f"{dn['min'] / c['min']:.1f}x | {c['useful']:.0%} / {dn['useful']:.0%} | "
                    f"{c['peak'] / 2**20:.0f} / {dn['peak'] / 2**20:.0f} MiB |"
                )
    text = "\n".join(table) + (
        f"\n\nfp32 matmul rate measured in the same run: {rate / 1e9:.0f} GFLOP/s. "
        f"Batch 2; robot d_model 256 / 4 heads, others d_model 128 / 2 heads. Machine: {machine_note()}. "
        "`python benchmarks/attention.py --write-readme`."
    )
    print(text)
    if args.write_readme:
        write_readme_section("attention", text)


if __name__ == "__main__":
    main()
