"""How a canvas model is noised in training and denoised in sampling.

A :class:`NoiseProcess` is chosen once, when a :class:`~canvas_engineering.CanvasModule` is
built, from its ``noise_scheduler`` name; the module asks it, it does not branch on names.
Every process works with a network that predicts the **clean** canvas (``x0``): the model's
loss is taken in data space on the decoded ``x0``, whatever the process.

* ``"ddpm"`` / ``"ddim"``: diffusers' :class:`~diffusers.DDPMScheduler` /
  :class:`~diffusers.DDIMScheduler` (``prediction_type="sample"``), integer timesteps.
* ``"flow"``: rectified flow, ``x_t = (1 - s) x0 + s e`` with ``s = t / num_train_timesteps``,
  sampled with diffusers' :class:`~diffusers.FlowMatchEulerDiscreteScheduler` (the ``x0``
  estimate is turned into the velocity ``(x_t - x0) / s`` it steps with).

Training timesteps are drawn by :func:`training_fractions`: ``"uniform"`` over the noise
levels, or ``"logit_normal"`` (the sigmoid of a normal draw, as in SD3; a positive
``logit_mean`` spends more steps at high noise, where the model must *predict* rather
than denoise).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Literal

import torch

from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.validation import check_choice, check_finite_float

__all__ = [
    "DiffusersNoiseProcess",
    "FlowMatchingProcess",
    "NoiseProcess",
    "NoiseSchedulerName",
    "TimestepSampling",
    "make_noise_process",
    "training_fractions",
]

#: Names accepted by ``CanvasModule(noise_scheduler=...)``.
NoiseSchedulerName = Literal["ddpm", "ddim", "flow"]
#: Names accepted by ``CanvasModule(timestep_sampling=...)``.
TimestepSampling = Literal["uniform", "logit_normal"]


def training_fractions(
    batch: int,
    sampling: TimestepSampling,
    logit_mean: float,
    logit_std: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(batch,)`` noise levels in ``(0, 1)``: 0 is clean, 1 is pure noise.

    Drawn from ``generator`` on its device, then moved to ``device`` (``None``: the global RNG, on ``device``).
    """
    where = device if generator is None else generator.device
    if sampling == "uniform":
        u = torch.rand(batch, device=where, generator=generator)
    else:
        u = torch.sigmoid(torch.randn(batch, device=where, generator=generator) * logit_std + logit_mean)
    return u.to(device)


class NoiseProcess(ABC):
    """Noising for training and the reverse process for sampling (see the module docstring).

    Args:
        num_train_timesteps: number of noise levels of the process.
        timestep_sampling: how training noise levels are drawn.
        logit_mean: mean of the normal draw for ``"logit_normal"``.
        logit_std: its standard deviation (> 0).

    """

    def __init__(
        self,
        num_train_timesteps: int,
        timestep_sampling: TimestepSampling = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        self.num_train_timesteps = int(num_train_timesteps)
        self.timestep_sampling = timestep_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)

    def training_timesteps(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(batch,)`` timesteps for a step, from ``generator`` (``None``: the global RNG, as training draws them).

        Training draws from the global RNG, whose state ``RNGState`` keeps in checkpoints, so
        resumed fits draw the same timesteps.
        """
        u = training_fractions(batch, self.timestep_sampling, self.logit_mean, self.logit_std, device, generator)
        return self.timesteps_from_fractions(u)

    @abstractmethod
    def timesteps_from_fractions(self, u: torch.Tensor) -> torch.Tensor:
        """Noise levels ``u`` in ``[0, 1]`` -> this process's timesteps."""

    @abstractmethod
    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t`` for ``clean (B, ...)``, ``noise`` like it, ``timesteps (B,)``."""

    @abstractmethod
    def reverse(self, steps: int) -> Iterator[tuple[float, ReverseStep]]:
        """Yield the sampling schedule: ``(timestep, step)`` pairs, from pure noise to clean.

        ``step(x0, x, generator)`` takes the model's clean estimate at that timestep and the
        current ``x_t`` and returns the next, less noisy, ``x``.
        """


class ReverseStep:
    """One step of a diffusers scheduler driven by a clean estimate (see :meth:`NoiseProcess.reverse`)."""

    def __init__(self, scheduler: object, timestep: float, to_output: object) -> None:
        self.scheduler, self.timestep, self.to_output = scheduler, timestep, to_output

    def __call__(self, x0: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the next ``x`` from the clean estimate ``x0`` and the current ``x``."""
        output = self.to_output(x0, x, self.timestep)
        return self.scheduler.step(output, self.timestep, x, generator=generator).prev_sample.to(x.dtype)


class DiffusersNoiseProcess(NoiseProcess):
    """DDPM or DDIM (diffusers), predicting the clean sample, over integer timesteps."""

    def __init__(self, kind: Literal["ddpm", "ddim"], num_train_timesteps: int, **sampling: object) -> None:
        super().__init__(num_train_timesteps, **sampling)  # type: ignore[arg-type]
        self.kind = kind
        self.scheduler = self._scheduler()

    def _scheduler(self):
        from diffusers import DDIMScheduler, DDPMScheduler

        cls = DDPMScheduler if self.kind == "ddpm" else DDIMScheduler
        return cls(num_train_timesteps=self.num_train_timesteps, prediction_type="sample", clip_sample=False)

    def timesteps_from_fractions(self, u: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.scheduler.add_noise(clean, noise, timesteps.cpu()).to(clean.dtype)

    def reverse(self, steps: int) -> Iterator[tuple[float, ReverseStep]]:  # noqa: D102
        scheduler = self._scheduler()  # a fresh one: set_timesteps mutates it
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            yield int(t), ReverseStep(scheduler, int(t), lambda x0, x, t: x0)


class FlowMatchingProcess(NoiseProcess):
    """Rectified flow ``x_t = (1 - s) x0 + s e``, ``s = t / num_train_timesteps``; Euler sampling."""

    def timesteps_from_fractions(self, u: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # a floor keeps s > 0, so the velocity (x_t - x0) / s stays finite
        return u.clamp(1e-3, 1.0) * self.num_train_timesteps

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:  # noqa: D102
        s = (timesteps.to(clean.device, clean.dtype) / self.num_train_timesteps).view(-1, *([1] * (clean.dim() - 1)))
        return (1 - s) * clean + s * noise

    def reverse(self, steps: int) -> Iterator[tuple[float, ReverseStep]]:  # noqa: D102
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps)
        scheduler.set_timesteps(steps)
        n = self.num_train_timesteps

        def velocity(x0: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
            return (x - x0) / max(float(t) / n, 1e-3)

        for t in scheduler.timesteps:
            yield float(t), ReverseStep(scheduler, float(t), velocity)


def make_noise_process(
    name: str,
    num_train_timesteps: int,
    timestep_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> NoiseProcess:
    """Build the process for ``CanvasModule(noise_scheduler=name, ...)``.

    Raises:
        CanvasValidationError: an unknown name or sampling, a non-finite ``logit_mean`` or
            ``logit_std``, or ``logit_std <= 0``.

    """
    check_choice(timestep_sampling, "CanvasModule.timestep_sampling", ("uniform", "logit_normal"))
    # a NaN or infinite draw would make every training timestep NaN
    check_finite_float(logit_mean, "CanvasModule.logit_mean")
    check_finite_float(logit_std, "CanvasModule.logit_std", minimum=0, open_min=True)
    sampling = {"timestep_sampling": timestep_sampling, "logit_mean": logit_mean, "logit_std": logit_std}
    if name in ("ddpm", "ddim"):
        return DiffusersNoiseProcess(name, num_train_timesteps, **sampling)  # type: ignore[arg-type]
    if name == "flow":
        return FlowMatchingProcess(num_train_timesteps, **sampling)  # type: ignore[arg-type]
    msg = f"CanvasModule.noise_scheduler={name!r} must be one of 'ddpm', 'ddim', 'flow'"
    raise CanvasValidationError(msg)
