"""Benchmark: one training step (forward + backward) of looped backbones.

* canvas DiT (robot canvas, causal_temporal, d_model 128, depth 4) with 1, 2 and 3 active
  loops, with and without per-loop activation checkpointing;
* a tiny CogVideoX (2 layers, 2 x 32 heads) grafted with 3 loops, dense topology vs a
  causal_temporal canvas topology through the canvas attention processor.

Each measurement runs in its own subprocess so peak RSS is its own; min and median of
``--repeat`` steps after a warm-up step.

    python benchmarks/looped.py [--write-readme] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_note, peak_rss_bytes, rss_bytes, time_it, write_readme_section  # noqa: E402

DIT_CASES = [(loops, ckpt) for ckpt in (False, True) for loops in (1, 2, 3)]
COG_CASES = ["dense", "causal_temporal"]


def dit_step(loops: int, checkpoint: bool):  # noqa: ANN201
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


def cog_step(kind: str):  # noqa: ANN201
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


def run(kind: str, a: str, b: str, repeat: int) -> dict:
    import torch

    torch.manual_seed(0)
    step = dit_step(int(a), b == "True") if kind == "dit" else cog_step(a)
    base = rss_bytes()
    step()
    peak = peak_rss_bytes() - base
    t_min, t_med = time_it(step, repeat=repeat, warmup=0)
    return {"kind": kind, "a": a, "b": b, "min": t_min, "median": t_med, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(*args.one, repeat=args.repeat)))
        return
    jobs = [("dit", str(loops), str(ckpt)) for loops, ckpt in DIT_CASES] + [("cog", k, "-") for k in COG_CASES]
    rows = []
    for job in jobs:
        out = subprocess.run([sys.executable, __file__, "--one", *job, "--repeat", str(args.repeat)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{job}: min {r['min'] * 1e3:.1f} ms median {r['median'] * 1e3:.1f} ms peak {r['peak'] / 2**20:.1f} MiB", flush=True)
    table = ["| model | loops | activation checkpointing / topology | step min / median | peak memory |", "|---|---:|---|---:|---:|"]
    for r in rows:
        if r["kind"] == "dit":
            table.append(f"| canvas DiT (depth 4, d 128, N 512, batch 4) | {r['a']} | {'on' if r['b'] == 'True' else 'off'} | "
                         f"{r['min'] * 1e3:.1f} / {r['median'] * 1e3:.1f} ms | {r['peak'] / 2**20:.0f} MiB |")
        else:
            table.append(f"| grafted tiny CogVideoX (2 layers, 512 video tokens, batch 2) | 3 | {r['a']} topology | "
                         f"{r['min'] * 1e3:.1f} / {r['median'] * 1e3:.1f} ms | {r['peak'] / 2**20:.0f} MiB |")
    text = "\n".join(table) + f"\n\nMachine: {machine_note()}. `python benchmarks/looped.py --write-readme`."
    print(text)
    if args.write_readme:
        write_readme_section("looped", text)


if __name__ == "__main__":
    main()
