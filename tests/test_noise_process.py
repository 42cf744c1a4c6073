"""Noise processes (DDPM/DDIM/flow), timestep draws, the learning-rate schedule and EMA weights."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from canvas_engineering.callbacks import EMAWeights
from canvas_fixtures import FORMATS, NO_VAL_DATA, tiny_loader, tiny_schema

from canvas_engineering import CanvasModule, CanvasValidationError
from canvas_engineering.training.module import WarmupCosine
from canvas_engineering.training.noise_process import FlowMatchingProcess, make_noise_process, training_fractions

pytestmark = NO_VAL_DATA


def test_flow_noises_linearly_and_its_reverse_ends_at_the_clean_estimate() -> None:
    process = make_noise_process("flow", 1000)
    assert isinstance(process, FlowMatchingProcess)
    clean, noise = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    t = torch.tensor([250.0, 1000.0])
    x = process.add_noise(clean, noise, t)
    assert torch.allclose(x[0], 0.75 * clean[0] + 0.25 * noise[0]) and torch.allclose(x[1], noise[1])
    # a model that always predicts the truth walks any start to the truth
    x = torch.randn(2, 5, 3)
    for _, step in process.reverse(4):
        x = step(clean, x)
    assert torch.allclose(x, clean, atol=1e-5)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_diffusers_processes_keep_integer_timesteps_in_range(name: str) -> None:
    process = make_noise_process(name, 100)
    t = process.timesteps_from_fractions(torch.tensor([0.0, 0.5, 0.999, 1.0]))
    assert t.dtype == torch.long and t.tolist() == [0, 50, 99, 99]
    assert [int(t) for t, _ in process.reverse(5)][0] > [int(t) for t, _ in process.reverse(5)][-1]


def test_logit_normal_draws_concentrate_where_the_mean_says() -> None:
    torch.manual_seed(0)
    high = training_fractions(4000, "logit_normal", 6.0, 0.1, "cpu")
    centred = training_fractions(4000, "logit_normal", 0.0, 1.0, "cpu")
    uniform = training_fractions(4000, "uniform", 0.0, 1.0, "cpu")
    assert float(high.min()) > 0.99
    assert abs(float(centred.median()) - 0.5) < 0.03 and abs(float(uniform.mean()) - 0.5) < 0.03


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_scheduler": "euler"}, "noise_scheduler"),
        ({"timestep_sampling": "cosine"}, "timestep_sampling"),
        ({"logit_std": 0.0}, "logit_std"),
        ({"logit_std": float("inf")}, "logit_std"),
        ({"logit_mean": float("nan")}, "logit_mean"),
        ({"logit_mean": True}, "logit_mean"),
        ({"lr_decay": "linear"}, "lr_decay"),
        ({"sample_metric_batches": -1}, "sample_metric_batches"),
    ],
)
def test_bad_recipe_options_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(CanvasValidationError, match=match):
        CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2}, **kwargs)


def test_logit_normal_errors_name_only_the_bad_option() -> None:
    def build(**kwargs: object) -> None:
        CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2}, **kwargs)

    with pytest.raises(CanvasValidationError, match=r"^CanvasModule\.logit_std=0\.0 must be a finite number > 0$"):
        build(logit_std=0.0)
    with pytest.raises(CanvasValidationError, match=r"^CanvasModule\.logit_mean=nan must be a finite number$"):
        build(logit_mean=float("nan"))


def test_warmup_cosine_factor() -> None:
    f = WarmupCosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    assert WarmupCosine(0, None)(5) == 1.0
    assert all(0 <= f(s) <= 1 for s in range(200)) and not math.isnan(f(1000))


def test_flow_model_trains_with_cosine_decay_and_ema_and_samples_finite() -> None:
    torch.manual_seed(0)
    model = CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2}, noise_scheduler="flow",
                         timestep_sampling="logit_normal", logit_mean=2.0, num_inference_steps=2, lr_decay="cosine",
                         warmup_steps=2, sample_metrics=False)
    ema = EMAWeights(decay=0.5, start_step=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[ema])
    trainer.fit(model, train_dataloaders=tiny_loader())
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
    # after fit the model holds the averaged weights
    averaged = dict(ema._average_model.module.named_parameters())
    assert all(torch.equal(p, averaged[n]) for n, p in model.named_parameters())
    out = model.sample(next(iter(tiny_loader())))
    assert all(bool(torch.isfinite(v).all()) for v in out.values())


@pytest.mark.parametrize(("decay", "start"), [(1.0, 0), (0.0, 0), (float("nan"), 0), (0.9, -1)])
def test_ema_refuses_bad_arguments(decay: float, start: int) -> None:
    with pytest.raises(CanvasValidationError, match="EMAWeights"):
        EMAWeights(decay=decay, start_step=start)
