"""Fault injection, types at the edges: half and double precision through attention, codecs and training.

A module in one dtype given tokens of another outside ``torch.autocast`` is a user error: the
public entry (``CanvasAttention``, ``CanvasDiT``, ``RegionEncoder``/``RegionDecoder``) raises a
:class:`PrecisionError` naming both dtypes and what to use, before any work. Under autocast, and
with the module converted (``module.to(dtype)``), every built-in attention type and every codec
runs and agrees with float32. A 2-step ``Trainer.fit`` of a tiny ``CanvasModule`` is run with
every precision Lightning offers: each fits with a finite loss close to float32's, or raises a
named error saying which precision to use (Lightning's own refusals are asserted as such).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from canvas_engineering.plugins.attention import BUILTIN_TYPES
from canvas_fixtures import FORMATS, NO_VAL_DATA, tiny_batch, tiny_loader, tiny_schema

from canvas_engineering import (
    CanvasAttention,
    CanvasDiT,
    CanvasError,
    CanvasLayout,
    CanvasModule,
    CanvasTopology,
    CanvasValidationError,
    Connection,
)
from canvas_engineering.errors import PrecisionError
from canvas_engineering.models.region_codecs import RegionDecoder, RegionEncoder, RegionFormat

pytestmark = NO_VAL_DATA

LAYOUT = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 2, 0, 1), "b": (0, 2, 0, 2, 1, 2)})
TYPES = [cls.name for cls in BUILTIN_TYPES]


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> bool:
    """``got`` within ``rel`` of ``want`` in relative L2 norm (absolute for an all-zero ``want``)."""
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm()) <= rel * float(want.norm()) + 1e-6


def _attention(fn: str) -> CanvasAttention:
    torch.manual_seed(0)
    topology = CanvasTopology([Connection("a", "b", fn=fn), Connection("b", "a", fn=fn), Connection("a", "a")])
    return CanvasAttention(LAYOUT, topology, d_model=16, n_heads=2)


def _tokens() -> torch.Tensor:
    return torch.randn(3, LAYOUT.num_positions, 16, generator=torch.Generator().manual_seed(1))


# -- CanvasAttention -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_attention_refuses_tokens_of_another_dtype_naming_both(dtype: torch.dtype) -> None:
    attn = _attention("cross_attention")
    with pytest.raises(PrecisionError) as err:
        attn(_tokens().to(dtype))
    msg = str(err.value)
    assert msg.startswith(f"CanvasAttention: tokens are {dtype} but the module's weights are torch.float32")
    assert f"torch.autocast('cpu', dtype={dtype})" in msg
    assert f"module.to({dtype})" in msg
    assert isinstance(err.value, CanvasValidationError) and isinstance(err.value, TypeError)


def test_attention_refuses_integer_tokens() -> None:
    tokens = torch.ones(1, LAYOUT.num_positions, 16, dtype=torch.long)
    expected = r"^CanvasAttention: tokens must be a floating-point tensor, got torch.int64; convert with \.float\(\)$"
    with pytest.raises(PrecisionError, match=expected):
        _attention("cross_attention")(tokens)


@pytest.mark.parametrize("fn", TYPES)
def test_every_attention_type_runs_under_autocast_and_converted(fn: str) -> None:
    attn = _attention(fn)
    x = _tokens()
    want = attn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = attn(x)  # float32 tokens, bfloat16 compute
        auto_bf16 = attn(x.bfloat16())  # bfloat16 tokens into float32 weights: autocast casts each op
    assert auto.dtype == torch.float32 and auto_bf16.dtype == torch.bfloat16
    assert _close(auto, want, 0.02) and _close(auto_bf16, want, 0.02)
    for dtype, rel in [(torch.bfloat16, 0.02), (torch.float16, 0.005), (torch.float64, 1e-5)]:
        converted = copy.deepcopy(attn).to(dtype)
        tokens = x.to(dtype).requires_grad_()
        out = converted(tokens)
        assert out.dtype == dtype, dtype
        assert _close(out, want, rel), dtype
        out.float().square().sum().backward()
        assert tokens.grad is not None and bool(torch.isfinite(tokens.grad).all()), dtype


def test_attention_under_autocast_backpropagates_finite_float32_gradients() -> None:
    attn = _attention("cross_attention")
    x = _tokens().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = attn(x).float().square().mean()
    loss.backward()
    grads = [p.grad for p in attn.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    assert x.grad is not None and x.grad.dtype == torch.float32


# -- CanvasDiT -------------------------------------------------------------------------------


def test_dit_refuses_then_runs_bfloat16() -> None:
    torch.manual_seed(0)
    dit = CanvasDiT(LAYOUT, CanvasTopology.dense(["a", "b"]), depth=1, n_heads=2)
    for p in dit.parameters():  # adaLN-Zero starts at the identity: move off it so outputs differ
        torch.nn.init.normal_(p, std=0.1)
    x, t = _tokens(), torch.tensor([10, 500, 900])
    want = dit(x, t)
    with pytest.raises(PrecisionError, match=r"^CanvasDiT: tokens are torch.bfloat16 but the module's weights are"):
        dit(x.bfloat16(), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _close(dit(x, t), want, 0.03)
    out = copy.deepcopy(dit).bfloat16()(x.bfloat16(), t)
    assert out.dtype == torch.bfloat16 and _close(out, want, 0.03)
    assert _close(copy.deepcopy(dit).double()(x.double(), t), want, 1e-5)


# -- region codecs ---------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["video", "action", "reward"])
def test_codecs_refuse_another_dtype_naming_the_region(region: str) -> None:
    layout = tiny_schema().layout
    fmt = RegionFormat(**FORMATS[region])
    encoder, decoder = RegionEncoder(fmt, layout, region), RegionDecoder(fmt, layout, region)
    data = tiny_batch(2)[region]
    tokens = encoder(data)
    with pytest.raises(PrecisionError, match=rf"^RegionEncoder: region '{region}' data are torch.bfloat16 but"):
        encoder(data.bfloat16())
    with pytest.raises(PrecisionError, match=rf"^RegionDecoder: region '{region}' tokens are torch.float64 but"):
        decoder(tokens.double())
    raw = (data * 255).to(torch.uint8)  # e.g. image bytes
    with pytest.raises(PrecisionError, match=rf"'{region}' data must be a floating-point tensor, got torch.uint8"):
        encoder(raw)


@pytest.mark.parametrize("region", ["video", "action", "reward"])
def test_codecs_run_under_autocast_and_converted(region: str) -> None:
    torch.manual_seed(0)
    layout = tiny_schema().layout
    fmt = RegionFormat(**FORMATS[region])
    encoder, decoder = RegionEncoder(fmt, layout, region), RegionDecoder(fmt, layout, region)
    data = tiny_batch(2)[region]
    want_tokens = encoder(data)
    want = decoder(want_tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _close(decoder(encoder(data)), want, 0.03)
        assert _close(decoder(encoder(data.bfloat16())), want, 0.03)
    for dtype, rel in [(torch.bfloat16, 0.03), (torch.float64, 1e-5)]:
        enc, dec = copy.deepcopy(encoder).to(dtype), copy.deepcopy(decoder).to(dtype)
        tokens = enc(data.to(dtype))
        out = dec(tokens)
        assert tokens.dtype == out.dtype == dtype
        assert _close(tokens, want_tokens, rel) and _close(out, want, rel), dtype


# -- Trainer.fit with every precision Lightning offers -----------------------------------------


class LossRecorder(pl.Callback):
    """Record every training step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(precision: str) -> tuple[CanvasModule, LossRecorder, pl.Trainer]:
    torch.manual_seed(0)
    module = CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2})
    recorder = LossRecorder()
    trainer = pl.Trainer(
        accelerator="cpu", precision=precision, max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
    )  # fmt: skip
    torch.manual_seed(1)  # the same noise and timesteps for every precision
    trainer.fit(module, tiny_loader(8, batch_size=4))
    return module, recorder, trainer


@pytest.fixture(scope="module")
def float32_losses() -> list[float]:
    return _fit("32-true")[1].losses


@pytest.mark.parametrize(
    ("precision", "weights", "rel"),
    [
        ("32-true", torch.float32, 0.0),
        ("64-true", torch.float64, 1e-3),
        ("bf16-mixed", torch.float32, 0.02),
        ("bf16-true", torch.bfloat16, 0.02),
    ],
)
def test_fit_with_precision(precision: str, weights: torch.dtype, rel: float, float32_losses: list[float]) -> None:
    module, recorder, _ = _fit(precision)
    assert len(recorder.losses) == 2 and all(math.isfinite(v) for v in recorder.losses)
    assert recorder.losses[0] == pytest.approx(float32_losses[0], rel=rel, abs=1e-7)
    assert {p.dtype for p in module.parameters()} == {weights}
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_fit_16_mixed_on_cpu_is_bf16_mixed(float32_losses: list[float]) -> None:
    # Lightning's own choice: CPU autocast has no float16 AMP, so it runs bfloat16 and says so
    with pytest.warns(UserWarning, match="AMP with fp16 is not supported on CPU"):
        module, recorder, trainer = _fit("16-mixed")
    assert trainer.precision == "bf16-mixed"
    assert recorder.losses[0] == pytest.approx(float32_losses[0], rel=0.02)
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_fit_16_true_is_refused_naming_the_precisions_that_train() -> None:
    with pytest.raises(PrecisionError) as err:
        _fit("16-true")
    msg = str(err.value)
    assert "AdamW cannot train float16 weights" in msg
    for usable in ("'bf16-true'", "'16-mixed'", "'bf16-mixed'", "'32-true'"):
        assert usable in msg
    assert isinstance(err.value, CanvasError)


def test_half_module_optimiser_is_refused_before_any_step() -> None:
    torch.manual_seed(0)
    module = CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2}).half()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(PrecisionError, match=r"\d+ of \d+ trainable parameters are torch.float16"):
        module.configure_optimizers()
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize("precision", ["transformer-engine", "transformer-engine-float16"])
def test_transformer_engine_is_lightnings_refusal(precision: str) -> None:
    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("transformer_engine is installed; it needs CUDA, which CPU tests do not have")
    with warnings.catch_warnings(), pytest.raises(ImportError, match="transformer_engine"):
        warnings.simplefilter("ignore")
        pl.Trainer(accelerator="cpu", precision=precision, logger=False)
