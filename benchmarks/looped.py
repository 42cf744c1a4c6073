"""Benchmark: looped backbones, and one CogVideoX canvas attention call at full size.

* canvas DiT (robot canvas, causal_temporal, d_model 128, depth 4) with 1, 2 and 3 active
  loops, with and without per-loop activation checkpointing: one training step;
* a tiny CogVideoX (2 layers, 2 x 32 heads) grafted with 3 loops, dense topology vs a
  causal_temporal canvas topology through the canvas attention processor: one training step;
* ONE call of the CogVideoX canvas attention processor at CogVideoX-2B's token count
  (17,550 video tokens = 13 latent frames x 30 x 45 patches, 226 text tokens; 2 heads of 16
  channels, so the mask dominates), causal_temporal canvas, forward only: the processor as it
  is (the plan's kernels) against the dense (L+N)^2 float mask it used to build, which is
  kept here, and only here, as the baseline (``dense_mask_call``).

Each measurement runs in its own subprocess so peak RSS is its own. Peak memory is that of
the first step/call (which builds every cache); times are ``torch.utils.benchmark`` min and
median of ``--repeat`` further steps/calls.

    python benchmarks/looped.py [--write-readme] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_note, peak_rss_bytes, rss_bytes, write_readme_section  # noqa: E402

DIT_CASES = [(loops, ckpt) for ckpt in (False, True) for loops in (1, 2, 3)]
COG_CASES = ["dense", "causal_temporal"]
#: (implementation, text rule) of the full-size processor call
PROCESSOR_CASES = [("dense_mask", "global"), ("kernels", "global"), ("kernels", "condition")]
#: CogVideoX-2B: 49 frames -> 13 latent frames; 480 x 720 px -> 60 x 90 latents -> 30 x 45 patches
COG2B_T, COG2B_H, COG2B_W, COG2B_TEXT = 13, 30, 45, 226


def timings(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(min, median) seconds of ``repeat`` single runs of ``fn``, timed by ``torch.utils.benchmark``."""
    import torch
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    times = [timer.timeit(1).times[0] for _ in range(repeat)]
    return min(times), statistics.median(times)


def dit_step(loops: int, checkpoint: bool):
    """Return one training step of the canvas DiT with ``loops`` active loops."""
    import torch

    from canvas_engineering import CanvasDiT, CanvasLayout, CanvasTopology

    layout = CanvasLayout(T=8, H=8, W=8, d_model=128, regions={
        "visual": (0, 8, 0, 6, 0, 8), "action": (0, 8, 6, 7, 0, 2), "reward": (0, 8, 7, 8, 0, 1)})
    model = CanvasDiT(layout, CanvasTopology.causal_temporal(list(layout.regions)), depth=4, n_heads=4,
                      max_loops=3, checkpoint=checkpoint)
    model.set_loops(loops)
    model.train()
    x = torch.randn(4, layout.num_positions, 128)
    t = torch.randint(0, 1000, (4,))

    def step() -> None:
        model(x, t).square().mean().backward()

    return step


def cog_step(kind: str):
    """Return one training step of the grafted tiny CogVideoX (``kind``: the topology)."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    from canvas_engineering import CanvasLayout, CanvasTopology, graft_looped_blocks

    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, num_layers=2,
        sample_frames=29, sample_height=16, sample_width=16, patch_size=2, text_embed_dim=32,
        time_embed_dim=32, max_text_seq_length=8,
    )
    frames = (29 - 1) // 4 + 1  # 8 latent frames of 8 x 8 patches = 512 tokens
    layout = CanvasLayout(T=frames, H=8, W=8, d_model=64, regions={"video": (0, frames, 0, 8, 0, 8)})
    topology = CanvasTopology.dense(["video"]) if kind == "dense" else CanvasTopology.causal_temporal(["video"])
    graft_looped_blocks(model, max_loops=3, freeze="full", canvas=(layout, topology))
    for block in model.transformer_blocks:
        block.set_loops(3)
    latents = torch.randn(2, frames, 4, 16, 16)
    text = torch.randn(2, 8, 32)
    t = torch.randint(0, 1000, (2,))

    def step() -> None:
        model(hidden_states=latents, encoder_hidden_states=text, timestep=t).sample.square().mean().backward()

    return step


def dense_mask_call(processor, attn, hidden_states, encoder_hidden_states):
    """Run the processor's former computation: a dense (L+N)^2 float mask (cached), then SDPA.

    A copy of what ``CanvasCogVideoXAttnProcessor`` did before it ran the plan's kernels,
    kept only as this benchmark's baseline.
    """
    import torch
    import torch.nn.functional as F

    plan, text_len = processor.plan, encoder_hidden_states.size(1)
    x = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # (B, S = L + N, D)
    batch, seq, _ = x.shape
    query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    query, key = attn.norm_q(query), attn.norm_k(key)
    cache = processor.__dict__.setdefault("_dense_baseline", {})
    if "bias" not in cache:
        weights = torch.ones(seq, seq)  # rows: queries [text, video]; columns: keys
        weights[text_len:, text_len:] = plan.dense_weights()
        if processor.text_rule in ("condition", "isolated"):
            weights[:text_len, text_len:] = 0.0
        if processor.text_rule == "isolated":
            weights[text_len:, :text_len] = 0.0
        valid = (weights > 0).any(1)
        bias = weights.log()
        bias[~valid] = 0.0
        cache["bias"], cache["valid"] = bias.to(query.dtype), None if bool(valid.all()) else valid
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=cache["bias"])
    if cache["valid"] is not None:
        out = out * cache["valid"][:, None]
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)))
    text, video = out.split([text_len, seq - text_len], dim=1)
    return video, text


def processor_call(impl: str, text_rule: str):
    """One forward call of the canvas processor at CogVideoX-2B's token count (``impl``: kernels or dense_mask)."""
    import torch
    from diffusers.models.attention_processor import Attention

    from canvas_engineering import CanvasLayout, CanvasTopology, compile_topology
    from canvas_engineering.integrations.cogvideox import CanvasCogVideoXAttnProcessor

    heads, head_dim = 2, 16
    attn = Attention(query_dim=heads * head_dim, dim_head=head_dim, heads=heads, qk_norm="layer_norm", eps=1e-6,
                     bias=True, out_bias=True).eval()  # CogVideoX's attention layer, narrow
    layout = CanvasLayout(T=COG2B_T, H=COG2B_H, W=COG2B_W, d_model=heads * head_dim,
                          regions={"video": (0, COG2B_T, 0, COG2B_H, 0, COG2B_W)})
    plan = compile_topology(layout, CanvasTopology.causal_temporal(["video"]))
    processor = CanvasCogVideoXAttnProcessor(plan, text_rule=text_rule)
    video = torch.randn(1, layout.num_positions, heads * head_dim)
    text = torch.randn(1, COG2B_TEXT, heads * head_dim)
    call = processor if impl == "kernels" else (lambda *a: dense_mask_call(processor, *a))

    def step():
        with torch.no_grad():
            return call(attn, video, text)

    return step


def run(kind: str, a: str, b: str, repeat: int, out_dir: str | None = None) -> dict:
    """Measure one case in this process: peak memory of the first step, then timings."""
    import torch

    torch.manual_seed(0)
    if kind == "dit":
        step = dit_step(int(a), b == "True")
    elif kind == "cog":
        step = cog_step(a)
    else:
        step = processor_call(a, b)
    base = rss_bytes()
    out = step()
    peak = peak_rss_bytes() - base
    t_min, t_med = timings(step, repeat)
    row = {"kind": kind, "a": a, "b": b, "min": t_min, "median": t_med, "peak": peak}
    if kind == "proc" and out_dir:  # outputs, to check that the two implementations agree
        torch.save(out, f"{out_dir}/{a}_{b}.pt")
    return row


def main() -> None:
    """Run every case in its own subprocess and print (or write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(*args.one, repeat=args.repeat, out_dir=args.out_dir)))
        return
    out_dir = tempfile.mkdtemp(prefix="looped_bench_")
    jobs = [("dit", str(loops), str(ckpt)) for loops, ckpt in DIT_CASES] + [("cog", k, "-") for k in COG_CASES]
    jobs += [("proc", impl, rule) for impl, rule in PROCESSOR_CASES]
    rows = []
    for job in jobs:
        cmd = [sys.executable, __file__, "--one", *job, "--repeat", str(args.repeat), "--out-dir", out_dir]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        ms, mib = f"min {r['min'] * 1e3:.1f} ms median {r['median'] * 1e3:.1f} ms", f"{r['peak'] / 2**20:.1f} MiB"
        print(f"{job}: {ms} peak {mib}", flush=True)
    table = [
        "| model | loops | activation checkpointing / topology | step min / median | peak memory |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        if r["kind"] == "dit":
            ckpt = "on" if r["b"] == "True" else "off"
            table.append(f"| canvas DiT (depth 4, d 128, N 512, batch 4) | {r['a']} | {ckpt} | "
                         f"{r['min'] * 1e3:.1f} / {r['median'] * 1e3:.1f} ms | {r['peak'] / 2**20:.0f} MiB |")
        elif r["kind"] == "cog":
            table.append(f"| grafted tiny CogVideoX (2 layers, 512 video tokens, batch 2) | 3 | {r['a']} topology | "
                         f"{r['min'] * 1e3:.1f} / {r['median'] * 1e3:.1f} ms | {r['peak'] / 2**20:.0f} MiB |")
    text = "\n".join(table) + "\n\n" + processor_table([r for r in rows if r["kind"] == "proc"], out_dir)
    shutil.rmtree(out_dir)
    text += f"\n\nMachine: {machine_note()}. `python benchmarks/looped.py --write-readme`."
    print(text)
    if args.write_readme:
        write_readme_section("looped", text)


def processor_table(rows: list[dict], out_dir: str) -> str:
    """Format the full-size processor rows, with the dense mask's own size and the outputs' agreement."""
    import torch

    s = COG2B_T * COG2B_H * COG2B_W + COG2B_TEXT
    mask_mib = s * s * 4 / 2**20
    ref = torch.load(f"{out_dir}/dense_mask_{PROCESSOR_CASES[0][1]}.pt")
    lines = [
        f"One CogVideoX canvas attention processor call at CogVideoX-2B's token count ({COG2B_T * COG2B_H * COG2B_W:,} "
        f"video tokens = {COG2B_T} x {COG2B_H} x {COG2B_W}, {COG2B_TEXT} text tokens; 2 heads x 16 channels, batch 1, "
        "forward), causal_temporal canvas. The dense float32 (L+N)^2 mask alone is "
        f"{mask_mib:,.0f} MiB; target: peak under a tenth of it ({mask_mib / 10:,.0f} MiB).",
        "",
        "| processor | text rule | call min / median | peak memory (first call, builds the mask) | vs dense mask |",
        "|---|---|---:|---:|---:|",
    ]
    base = next(r for r in rows if r["a"] == "dense_mask")
    for r in rows:
        if r["a"] == "dense_mask":
            name = "before: dense (L+N)^2 mask + SDPA (baseline)"
        else:
            name = "after: plan kernels (auto -> tiled on CPU)"
        if r["a"] == "kernels" and r["b"] == base["b"]:
            out = torch.load(f"{out_dir}/kernels_{r['b']}.pt")
            diff = max(float((o - p).abs().max()) for o, p in zip(out, ref, strict=True))
            name += f", max abs diff to baseline {diff:.1e}"
        lines.append(f"| {name} | {r['b']} | {r['min'] * 1e3:.0f} / {r['median'] * 1e3:.0f} ms | "
                     f"{r['peak'] / 2**20:,.0f} MiB | {r['peak'] / base['peak']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
