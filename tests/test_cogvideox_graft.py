"""The CogVideoX graft: looped blocks, freeze strategies, the canvas processor, the backbone plugin.

Every model is built from a tiny config in code (diffusers' own test sizes); nothing is
downloaded. The CogVideoX-2B architecture is built on the meta device only.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from diffusers import CogVideoXTransformer3DModel  # noqa: E402
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0  # noqa: E402

from canvas_engineering import (  # noqa: E402
    ActionHead,
    CanvasBackbone,
    CanvasCogVideoXAttnProcessor,
    CanvasLayout,
    CanvasTopology,
    CanvasValidationError,
    Connection,
    LoopedBlockWrapper,
    compile_topology,
    freeze_full,
    freeze_half,
    get_registry,
    graft_looped_blocks,
    install_canvas_processor,
)

#: diffusers' tiny CogVideoX test sizes: 9 frames -> 3 latent frames; 8x8 latents, patch 2 -> 4x4
TINY = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=4,
    num_layers=2,
    sample_frames=9,
    sample_height=8,
    sample_width=8,
    patch_size=2,
    text_embed_dim=16,
    time_embed_dim=8,
    max_text_seq_length=4,
)
T, H, W, P = 3, 4, 4, 2  # latent frames, patch rows, patch columns, patch size
N = T * H * W

#: CogVideoX-2B transformer config (THUDM/CogVideoX-2b transformer/config.json; also diffusers'
#: defaults and scripts/convert_cogvideox_to_diffusers.py: 30 layers, 30 heads, no RoPE for 2B)
COGVIDEOX_2B = dict(
    num_attention_heads=30,
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    num_layers=30,
    text_embed_dim=4096,
    time_embed_dim=512,
    sample_frames=49,
    sample_height=60,
    sample_width=90,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=226,
    use_rotary_positional_embeddings=False,
)


def tiny_model(seed: int = 0, **overrides: object) -> CogVideoXTransformer3DModel:
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**{**TINY, **overrides}).eval()


def tiny_inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, T, TINY["in_channels"], H * P, W * P, generator=g)  # (B, F, C, H, W)
    text = torch.randn(batch, TINY["max_text_seq_length"], TINY["text_embed_dim"], generator=g)
    return latents, text, torch.tensor([10, 500][:batch])


def run(model: nn.Module, latents: torch.Tensor, text: torch.Tensor, t: torch.Tensor, **kw: object) -> torch.Tensor:
    with torch.no_grad():
        return model(latents, text, t, **kw).sample


def patch(pos: int) -> tuple[slice | int, ...]:
    """Index of canvas position ``pos`` in a (B, F, C, H, W) latent: CogVideoX's token order."""
    f, h, w = pos // (H * W), (pos // W) % H, pos % W
    return (slice(None), f, slice(None), slice(h * P, h * P + P), slice(w * P, w * P + P))


def video_layout(**regions: tuple[int, ...]) -> CanvasLayout:
    return CanvasLayout(T=T, H=H, W=W, d_model=32, regions=regions or {"video": (0, T, 0, H, 0, W)})


#: left half reads only itself; right half reads itself and the left half
LEFT_RIGHT = (
    video_layout(left=(0, T, 0, H, 0, 2), right=(0, T, 0, H, 2, W)),
    CanvasTopology([Connection("left", "left"), Connection("right", "right"), Connection("right", "left")]),
)
#: frame f reads frames f and f - 1
CAUSAL = (video_layout(), CanvasTopology.causal_temporal(["video"]))


# -- grafting --------------------------------------------------------------------------


def test_zero_init_graft_reproduces_stock_model_exactly() -> None:
    stock = tiny_model()
    grafted = copy.deepcopy(stock)
    looped, head = graft_looped_blocks(grafted, max_loops=3, freeze="full")
    assert isinstance(looped, nn.ModuleList) and looped is grafted.transformer_blocks
    assert all(isinstance(b, LoopedBlockWrapper) for b in looped) and len(looped) == TINY["num_layers"]
    assert isinstance(head, ActionHead) and head.latent_dim == TINY["out_channels"]
    assert all(isinstance(p, CanvasCogVideoXAttnProcessor) for p in grafted.attn_processors.values())
    inputs = tiny_inputs()
    torch.testing.assert_close(run(grafted, *inputs), run(stock, *inputs), rtol=0, atol=1e-6)
    assert torch.equal(run(grafted, *inputs), run(stock, *inputs))


def test_action_head_reads_output_latent_channels() -> None:
    model = tiny_model()
    _, head = graft_looped_blocks(model)
    sample = run(model, *tiny_inputs())  # (B, F, C, H, W)
    tokens = sample.permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, F*H*W, C)
    assert head(tokens).shape == (2, 7)


@pytest.mark.parametrize("skip_dense_mask", [True, False], ids=["no-mask", "dense-float-mask"])
def test_dense_topology_with_canvas_processor_matches_stock(skip_dense_mask: bool) -> None:
    stock = tiny_model()
    grafted = copy.deepcopy(stock)
    graft_looped_blocks(grafted, max_loops=3)
    layout = video_layout()
    install_canvas_processor(grafted, (layout, CanvasTopology.dense(["video"])), skip_dense_mask=skip_dense_mask)
    inputs = tiny_inputs()
    out, ref = run(grafted, *inputs), run(stock, *inputs)
    diff = (out - ref).abs()
    assert diff.max() < 1e-5, f"max_diff={diff.max():.3g} mean_diff={diff.mean():.3g}"
    if skip_dense_mask:
        assert torch.equal(out, ref)


def test_graft_errors_name_the_culprit() -> None:
    with pytest.raises(CanvasValidationError, match="no transformer blocks on Linear"):
        graft_looped_blocks(nn.Linear(2, 2))
    with pytest.raises(CanvasValidationError, match="freeze='most'"):
        graft_looped_blocks(tiny_model(), freeze="most")  # type: ignore[arg-type]
    with pytest.raises(CanvasValidationError, match="text_rule='everything'"):
        graft_looped_blocks(tiny_model(), text_rule="everything")  # type: ignore[arg-type]
    model = tiny_model()
    graft_looped_blocks(model)
    with pytest.raises(CanvasValidationError, match="already grafted"):
        graft_looped_blocks(model)
    with pytest.raises(CanvasValidationError, match="no looped blocks"):
        freeze_full(tiny_model())
    with pytest.raises(CanvasValidationError, match="no `patch_embed`"):
        freeze_half(nn.Linear(2, 2))


@pytest.mark.parametrize("action_dim", [0, True, 2.0])
def test_graft_refuses_a_bad_action_dim(action_dim: object) -> None:
    with pytest.raises(CanvasValidationError, match=rf"action_dim={action_dim!r} must be an integer >= 1"):
        graft_looped_blocks(tiny_model(), action_dim=action_dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan"), True, "x"])
def test_processor_refuses_a_bad_beta(beta: object) -> None:
    # checked before attention runs: a bool, a string or a non-finite factor is a project error
    layout = CanvasLayout(T=1, H=1, W=2, d_model=16, regions={"video": (0, 1, 0, 1, 0, 2)})
    proc = CanvasCogVideoXAttnProcessor(compile_topology(layout, CanvasTopology.dense(["video"])))
    bad_beta = r"CanvasCogVideoXAttnProcessor: beta=.* must be a finite number > 0"
    with pytest.raises(CanvasValidationError, match=bad_beta):
        proc(None, torch.zeros(1, 2, 16), torch.zeros(1, 1, 16), beta=beta)  # type: ignore[arg-type]
    assert proc.calls == 0


# -- freeze strategies -------------------------------------------------------------------


def test_trainable_counts_per_freeze_level() -> None:
    counts = {}
    for freeze in ("full", "half", "none"):
        model = tiny_model()
        looped, head = graft_looped_blocks(model, max_loops=3, freeze=freeze)
        loop_params = sum(p.numel() for b in looped for p in b.loop_parameters())
        head_params = sum(p.numel() for p in head.parameters())
        every = sum(p.numel() for p in model.parameters())
        patch = sum(p.numel() for p in model.patch_embed.parameters())
        counts[freeze] = model.canvas_trainable_parameters
        assert model.freeze_strategy == freeze
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert counts[freeze] == trainable + head_params
        expected = {"full": loop_params, "half": every - patch, "none": every}[freeze]
        assert trainable == expected
    inner = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    assert loop_params == TINY["num_layers"] * 3 * (inner + inner)  # video + text stream, per loop
    assert counts["full"] == loop_params + head_params
    assert counts["full"] < counts["half"] < counts["none"]


@pytest.mark.parametrize("freeze", ["full", "half", "none"])
def test_gradient_reaches_loop_embeddings(freeze: str) -> None:
    model = tiny_model()
    looped, _ = graft_looped_blocks(model, max_loops=3, freeze=freeze)
    for block in looped:
        block.set_loops(2)
    latents, text, t = tiny_inputs()
    out = model(latents, text, t).sample
    (out * torch.randn_like(out)).sum().backward()
    for block in looped:
        for emb in (block.loop_embeddings, block.stream_embeddings):
            assert emb.grad is not None
            assert (emb.grad[:2].abs().sum(1) > 0).all()  # both active loops
            assert torch.equal(emb.grad[2], torch.zeros_like(emb.grad[2]))  # inactive loop
    frozen_patch = model.patch_embed.proj.weight.grad is None
    assert frozen_patch == (freeze in ("full", "half"))
    assert (model.proj_out.weight.grad is None) == (freeze == "full")


def test_per_loop_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpoint in (False, True):
        model = tiny_model().train()
        looped, _ = graft_looped_blocks(model, max_loops=3, checkpoint=checkpoint)
        for block in looped:
            block.set_loops(3)
            block.set_betas([1.0, 1.5, 2.0])
        out = model(*tiny_inputs()).sample
        out.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for b in looped for p in b.loop_parameters()]))
    torch.testing.assert_close(grads[1], grads[0])


def test_cogvideox_2b_on_meta_device_trainable_count() -> None:
    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**COGVIDEOX_2B)
    backbone_params = sum(p.numel() for p in model.parameters())
    looped, head = graft_looped_blocks(model, max_loops=3, freeze="full")
    assert next(model.parameters()).is_meta and looped[0].loop_embeddings.is_meta
    inner = 30 * 64  # 1920
    loops = 30 * 3 * (inner + inner)  # 30 blocks x 3 loops x (video + text loop embedding)
    head_params = (16 * 256 + 256) + (256 * 7 + 7)  # ActionHead(16 latent channels -> 256 -> 7)
    expected = loops + head_params
    print(
        f"\nCogVideoX-2B graft (3 loops, freeze='full'): {model.canvas_trainable_parameters:,} trainable = "
        f"{loops:,} loop embeddings + {head_params:,} action head; backbone {backbone_params:,} frozen"
    )
    assert (loops, head_params, expected) == (345_600, 6_151, 351_751)
    assert model.canvas_trainable_parameters == expected
    assert backbone_params == 1_693_783_872


# -- the canvas attention processor --------------------------------------------------------


class SpyProcessor(CanvasCogVideoXAttnProcessor):
    """Records every beta and plan that reaches ``__call__``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[float, object]] = []

    def __call__(  # noqa: D102
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        beta: float = 1.0,
        canvas_plan: object = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append((beta, canvas_plan))
        return super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, beta, canvas_plan
        )


def test_beta_kwarg_reaches_the_processor() -> None:
    model = tiny_model()
    looped, _ = graft_looped_blocks(model, max_loops=3)
    spy = SpyProcessor()
    model.set_attn_processor({name: spy for name in model.attn_processors})
    inputs = tiny_inputs()
    run(model, *inputs)  # one loop per block, default beta
    assert spy.seen == [(1.0, None)] * TINY["num_layers"]
    for block in looped:
        block.set_loops(3)
        block.set_betas([0.5, 2.0, 3.0])
    sharp = run(model, *inputs)
    assert [b for b, _ in spy.seen[2:]] == [0.5, 2.0, 3.0] * TINY["num_layers"]  # block by block, loop by loop
    assert spy.last_beta == 3.0 and spy.calls == len(spy.seen) == 8
    for block in looped:  # and it changes the computation
        block.set_betas([1.0, 1.0, 1.0])
    assert not torch.allclose(run(model, *inputs), sharp)


def test_stock_processor_silently_drops_beta() -> None:
    """The trap the explicit kwarg guards against: diffusers drops undeclared kwargs."""
    model = tiny_model()
    looped, _ = graft_looped_blocks(model, max_loops=3)
    model.set_attn_processor(CogVideoXAttnProcessor2_0())
    inputs = tiny_inputs()
    for block in looped:
        block.set_loops(2)
    ref = run(model, *inputs)
    for block in looped:
        block.set_betas([4.0, 4.0, 4.0])
    assert torch.equal(run(model, *inputs), ref)  # beta never arrived


def test_canvas_plan_kwarg_overrides_per_call() -> None:
    plan = compile_topology(*CAUSAL)
    with_plan = tiny_model()
    graft_looped_blocks(with_plan, canvas=plan)
    per_call = tiny_model()
    graft_looped_blocks(per_call)
    inputs = tiny_inputs()
    out = run(per_call, *inputs, attention_kwargs={"canvas_plan": plan})
    torch.testing.assert_close(out, run(with_plan, *inputs))
    assert not torch.allclose(out, run(per_call, *inputs))


def reach(plan, layers: int) -> torch.Tensor:
    """(N, N) bool: query i's output can depend on token j after ``layers`` layers (residual included)."""
    step = plan.dense_allowed() | torch.eye(plan.num_positions, dtype=torch.bool)
    out = step
    for _ in range(layers - 1):
        out = (out.float() @ step.float()) > 0
    return out


@pytest.mark.parametrize(
    ("canvas", "layers", "text_rule", "perturbed", "some_blocked"),
    [
        pytest.param(LEFT_RIGHT, 1, "global", 2, True, id="left-right-1layer-global"),  # (t0, h0, w2): right
        pytest.param(LEFT_RIGHT, 2, "condition", 2 * H * W + 3, True, id="left-right-2layers-condition"),
        pytest.param(LEFT_RIGHT, 2, "isolated", H * W + 2, True, id="left-right-2layers-isolated"),
        pytest.param(LEFT_RIGHT, 2, "condition", H * W + 1, False, id="left-right-permitted"),  # left: all read it
        pytest.param(CAUSAL, 1, "global", H * W + 5, True, id="causal-1layer-global"),  # frame 1
        pytest.param(CAUSAL, 2, "condition", H * W + 5, True, id="causal-2layers-condition"),
    ],
)
def test_blocked_tokens_cannot_influence_outputs(
    canvas, layers: int, text_rule: str, perturbed: int, some_blocked: bool
) -> None:
    """Perturb one latent patch: exactly the positions the plan lets see it (over ``layers``) change."""
    plan = compile_topology(*canvas)
    model = tiny_model(num_layers=layers)
    graft_looped_blocks(model, canvas=plan, text_rule=text_rule)
    latents, text, t = tiny_inputs()
    bumped = latents.clone()
    bumped[patch(perturbed)] += 3.0
    before, after = run(model, latents, text, t), run(model, bumped, text, t)
    sees = reach(plan, layers)[:, perturbed]  # (N,) which outputs the plan lets depend on it
    assert bool(sees[perturbed]) and bool(~sees.all()) == some_blocked
    for q in range(N):
        changed = not torch.equal(before[patch(q)], after[patch(q)])
        assert changed == bool(sees[q]), f"position {q}: changed={changed}, plan allows={bool(sees[q])}"


def test_global_text_rule_relays_across_layers() -> None:
    """Documented: under "global", text tokens read every position and pass it on a layer later."""
    plan = compile_topology(*LEFT_RIGHT)
    model = tiny_model(num_layers=2)
    graft_looped_blocks(model, canvas=plan, text_rule="global")
    latents, text, t = tiny_inputs()
    bumped = latents.clone()
    bumped[patch(2)] += 3.0  # a right-half position; no left position may see it directly
    assert not reach(plan, 2)[0, 2]
    assert not torch.equal(run(model, latents, text, t)[patch(0)], run(model, bumped, text, t)[patch(0)])


def test_query_with_no_allowed_key_gets_zero() -> None:
    layout = video_layout(a=(0, T, 0, H, 0, 2), b=(0, T, 0, H, 2, W))
    plan = compile_topology(layout, CanvasTopology([Connection("a", "a")]))  # b reads nothing
    model = tiny_model()
    graft_looped_blocks(model)
    attn = model.transformer_blocks[0].block.attn1
    proc = CanvasCogVideoXAttnProcessor(plan, text_rule="isolated")
    hidden, text = torch.randn(2, N, 16), torch.randn(2, 4, 16)
    with torch.no_grad():
        video, _ = proc(attn, hidden, text)
    lonely = layout.region_indices("b")
    expected = attn.to_out[0].bias.expand(2, len(lonely), -1)  # zero attention output, then the out-projection
    torch.testing.assert_close(video[:, lonely], expected)
    assert not torch.allclose(video[:, layout.region_indices("a")], attn.to_out[0].bias.expand(2, len(lonely), -1))


def test_layout_size_mismatch_names_both_numbers() -> None:
    model = tiny_model()
    bad = CanvasLayout(T=2, H=4, W=4, d_model=32, regions={"video": (0, 2, 0, 4, 0, 4)})
    graft_looped_blocks(model, canvas=(bad, CanvasTopology.dense(["video"])))
    with pytest.raises(CanvasValidationError, match=r"T\*H\*W = 2\*4\*4 = 32 positions .* 48 video tokens"):
        run(model, *tiny_inputs())


def test_importing_the_package_does_not_import_diffusers() -> None:
    code = "import sys, canvas_engineering; assert 'diffusers' not in sys.modules, 'diffusers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the backbone plugin ---------------------------------------------------------------


def build_backbone(canvas=LEFT_RIGHT, **kw: object) -> CanvasBackbone:
    torch.manual_seed(0)
    factory = get_registry().backbones["cogvideox"].obj
    return factory(*canvas, config={**TINY, **kw.pop("config", {})}, **kw)


def test_backbone_plugin_forward_backward() -> None:
    backbone = build_backbone(max_loops=3, freeze="full")
    assert isinstance(backbone, CanvasBackbone) and backbone.max_loops == 3
    assert len(backbone.looped_blocks) == TINY["num_layers"]
    inner = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    d = LEFT_RIGHT[0].d_model
    loop_params = TINY["num_layers"] * 3 * 2 * inner
    new_params = (d * inner + inner) + 4 * inner + (inner * d + d)  # proj_in, text tokens, proj_out
    assert backbone.trainable_parameters == loop_params + new_params
    backbone.set_loops(2)
    backbone.set_betas([1.0, 2.0, 3.0])
    tokens = torch.randn(2, N, d)
    out = backbone(tokens, torch.tensor([3.0, 700.0]))
    assert out.shape == (2, N, d) and torch.equal(out, torch.zeros_like(out))  # zero-init out-projection
    out.square().sum().backward()
    nn.init.normal_(backbone.proj_out.weight)  # leave the zero init to see gradients upstream
    backbone.zero_grad()
    backbone(tokens, 5.0).square().sum().backward()
    for block in backbone.looped_blocks:
        assert (block.loop_embeddings.grad[:2].abs().sum(1) > 0).all()
        assert torch.equal(block.loop_embeddings.grad[2], torch.zeros(inner))
    assert backbone.text_tokens.grad.abs().sum() > 0 and backbone.proj_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.time_embedding.parameters())  # frozen
    assert next(iter(backbone.processors.values())).last_beta == 2.0


def test_backbone_respects_topology_and_freeze_levels() -> None:
    counts = {f: build_backbone(freeze=f).trainable_parameters for f in ("full", "half", "none")}
    assert counts["full"] < counts["half"] == counts["none"]  # no patch embedding in the backbone
    backbone = build_backbone()
    nn.init.normal_(backbone.proj_out.weight)
    tokens = torch.randn(1, N, LEFT_RIGHT[0].d_model)
    bumped = tokens.clone()
    bumped[:, 3] += 1.0  # a right-half position (t0, h0, w3)
    with torch.no_grad():
        diff = (backbone(tokens, 10.0) - backbone(bumped, 10.0)).abs().sum(-1)[0]  # (N,)
    sees = reach(backbone.plan, TINY["num_layers"])[:, 3]
    assert torch.equal(diff > 0, sees)


def test_backbone_with_rotary_embeddings() -> None:
    rope = {"attention_head_dim": 16, "use_rotary_positional_embeddings": True}  # 3D RoPE needs head_dim 16+
    backbone = build_backbone(config=rope, freeze="none")
    assert backbone.rotary_cos.shape == (N, 16)
    out = backbone(torch.randn(2, N, 32), torch.tensor([1, 2]))
    out.sum().backward()
    assert out.shape == (2, N, 32)


def test_backbone_argument_errors() -> None:
    factory = get_registry().backbones["cogvideox"].obj
    with pytest.raises(CanvasValidationError, match="not both"):
        factory(*LEFT_RIGHT, config=TINY, pretrained_path="/nonexistent")
    with pytest.raises(CanvasValidationError, match="text_tokens=0"):
        factory(*LEFT_RIGHT, config=TINY, text_tokens=0)
    with pytest.raises(CanvasValidationError, match=r"expected tokens of shape \(B, 48, 32\)"):
        build_backbone()(torch.randn(1, 47, 32), 1.0)


def test_cogvideox_backbone_is_skipped_without_diffusers(monkeypatch: pytest.MonkeyPatch) -> None:
    from canvas_engineering.plugins.backbones import cogvideox as plugin

    from canvas_engineering.plugin_host.host import KindRegistry

    real = plugin.importlib.util.find_spec
    monkeypatch.setattr(
        plugin.importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a)
    )
    registry = KindRegistry("backbone")
    plugin.register_cogvideox(registry)  # no error, nothing registered
    assert "cogvideox" not in registry
    monkeypatch.undo()
    plugin.register_cogvideox(registry)
    assert registry["cogvideox"].obj is plugin.build_cogvideox_backbone


# -- the processor on the plan's kernels ----------------------------------------------------


def test_graft_compiles_once_and_every_layer_shares_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    import canvas_engineering.integrations.cogvideox as cogvideox_module

    calls = []
    original = cogvideox_module.compile_topology
    monkeypatch.setattr(cogvideox_module, "compile_topology", lambda *a: calls.append(1) or original(*a))
    model = tiny_model()
    graft_looped_blocks(model, canvas=CAUSAL)
    processors = list(model.attn_processors.values())
    assert len(calls) == 1 and len(processors) == TINY["num_layers"]
    assert all(p is processors[0] for p in processors) and processors[0].plan is not None
    run(model, *tiny_inputs())
    assert len(calls) == 1


#: 4 latent frames of 8 x 8 patches and 8 text tokens: 264^2 pairs, past the dense-kernel threshold
BIG_T, BIG_H, BIG_W, BIG_TEXT = 4, 8, 8, 8


def attn_qkv(attn, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return attn.to_q(x), attn.to_k(x), attn.to_v(x)


def processor_reference(proc, attn, hidden, text, beta):
    """The processor's formula over the dense [text, video] mask it documents (float64)."""
    L = text.shape[1]
    bias, valid = proc.mask(proc.plan, L, hidden.shape[1], dtype=torch.float64)
    x = torch.cat([text, hidden], dim=1).double()
    heads = attn.heads
    q, k, v = (t.view(x.shape[0], -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in attn_qkv(attn, x))
    q, k = attn.norm_q(q), attn.norm_k(k)
    logits = beta * (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5 + (0.0 if bias is None else bias)
    out = torch.softmax(logits, -1) @ v
    if valid is not None:
        out = out * valid[:, None]
    out = attn.to_out[0](out.transpose(1, 2).reshape(x.shape[0], -1, x.shape[-1]))
    return out[:, L:], out[:, :L]


@pytest.mark.parametrize("text_rule", ["global", "condition", "isolated"])
@pytest.mark.parametrize("kernel", ["auto", "flex", "dense"])
def test_processor_kernels_match_the_dense_formula(text_rule: str, kernel: str) -> None:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, dim_head=8, heads=2, qk_norm="layer_norm", eps=1e-6, bias=True, out_bias=True)
    layout = CanvasLayout(T=BIG_T, H=BIG_H, W=BIG_W, d_model=16, regions={
        "left": (0, BIG_T, 0, BIG_H, 0, 4), "right": (0, BIG_T, 0, BIG_H, 4, BIG_W)})
    topology = CanvasTopology([
        *CanvasTopology.causal_temporal(["left", "right"]).connections,
        Connection("right", "left", t_src=0, t_dst=-2, weight=0.5),
    ])
    plan = compile_topology(layout, topology)
    proc = CanvasCogVideoXAttnProcessor(plan, text_rule=text_rule, kernel=kernel)
    hidden = torch.randn(2, layout.num_positions, 16)
    text = torch.randn(2, BIG_TEXT, 16)
    attn.double()
    with torch.no_grad():
        video, txt = proc(attn, hidden.double(), text.double(), beta=1.7)
        ref_video, ref_text = processor_reference(proc, attn, hidden, text, 1.7)
    torch.testing.assert_close(video, ref_video, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(txt, ref_text, atol=1e-9, rtol=1e-7)
    joint = proc.joint_mask(plan, BIG_TEXT, layout.num_positions)
    if kernel == "auto":  # the CPU rule picks the tiled kernel here, and it never builds (L + N)^2
        assert joint.num_queries * joint.num_keys > 65536
        assert not any(k[0] == "dense_bias" for k in joint.cache)
    assert proc.joint_mask(plan, BIG_TEXT, layout.num_positions) is joint  # cached per (plan, text length)


def test_processor_trains_through_the_tiled_kernel() -> None:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, dim_head=8, heads=2, qk_norm="layer_norm", eps=1e-6, bias=True, out_bias=True)
    layout = CanvasLayout(T=BIG_T, H=BIG_H, W=BIG_W, d_model=16, regions={"video": (0, BIG_T, 0, BIG_H, 0, BIG_W)})
    plan = compile_topology(layout, CanvasTopology.causal_temporal(["video"]))
    proc = CanvasCogVideoXAttnProcessor(plan, text_rule="condition")
    hidden = torch.randn(1, layout.num_positions, 16, requires_grad=True)
    text = torch.randn(1, BIG_TEXT, 16, requires_grad=True)
    video, txt = proc(attn, hidden, text)
    (video.square().sum() + txt.square().sum()).backward()
    dense = CanvasCogVideoXAttnProcessor(plan, text_rule="condition", kernel="dense")
    h2, t2 = hidden.detach().clone().requires_grad_(True), text.detach().clone().requires_grad_(True)
    v2, x2 = dense(attn, h2, t2)
    (v2.square().sum() + x2.square().sum()).backward()
    torch.testing.assert_close(hidden.grad, h2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(text.grad, t2.grad, atol=1e-5, rtol=1e-4)
    # frame-aligned tiles (64 tokens a frame): one bias row per block at most, nothing (L + N)^2
    joint = proc.joint_mask(plan, BIG_TEXT, layout.num_positions)
    buckets = joint.tiles(BIG_H * BIG_W).buckets
    assert all(b.bias is None or b.bias.shape[1] == 1 for b in buckets)
    assert any(b.bias is not None for b in buckets)  # the text block is short, so it is masked
