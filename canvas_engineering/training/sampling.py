"""Sampling: denoise the future of a batch, and shape what ``predict_step`` returns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from canvas_engineering.training.region_behaviour import RegionBehaviour

if TYPE_CHECKING:
    from canvas_engineering.training.module import CanvasModule

__all__ = ["PredictionOutputs", "denoise_future"]


def denoise_future(
    model: CanvasModule,
    batch: Mapping[str, torch.Tensor],
    steps: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Run the reverse process of ``model`` from pure noise at its predicted positions.

    Each step predicts every region's clean data, re-encodes it as the clean canvas
    estimate and lets the noise process take one step. Context frames of the result are the
    batch's data as given.

    Args:
        model: the canvas model.
        batch: region tensors (the context).
        steps: denoising steps.
        generator: RNG for the noise (CPU; ``None``: the global RNG).

    Returns:
        Region -> ``(B, t, ...)``: predicted frames decoded from the final canvas, context
        frames copied from ``batch``.

    """
    b = model.validate_batch(batch)
    clean = model.encode(batch)
    # start from pure noise at the predicted positions
    x = model.compose(torch.randn(clean.shape, generator=generator, device="cpu").to(clean), clean)
    pred: dict[str, torch.Tensor] = {}
    for t, step in model.noise_process.reverse(steps):
        timestep = torch.full((b,), t, device=model.device)
        pred, clean = model(batch, timestep, canvas=x)
        x0 = model.encode({**batch, **pred})  # the model's clean estimate, re-encoded
        x = model.compose(step(x0, x, generator), clean)
    # context frames are given, not predicted: return them as they came in
    for name, value in pred.items():
        if name in batch:
            given = ~model.predicted_frames(name)
            value[:, given] = batch[name][:, given.to(batch[name].device)].to(value)
    return pred


@dataclass(frozen=True)
class PredictionOutputs:
    """What ``predict_step`` returns: which regions, and which regions' last frames as ``memory_out``.

    Args:
        returned: the regions returned.
        memory: the regions whose last frame is returned under ``"memory_out"``.

    """

    returned: tuple[str, ...]
    memory: tuple[str, ...]

    @classmethod
    def choose(
        cls,
        regions: Mapping[str, RegionBehaviour],
        fed: Iterable[str],
        predicted_frames: Callable[[str], torch.Tensor],
        every: bool,
    ) -> PredictionOutputs:
        """Choose the outputs of a model.

        Args:
            regions: region -> behaviour.
            fed: the regions a batch feeds, in order.
            predicted_frames: region -> ``(t,)`` bool predicted frames.
            every: return every fed region (a model built without a program); else the regions
                with predicted frames and those whose compile mode exports them.

        """
        fed = list(fed)
        returned = [n for n in fed if every or bool(predicted_frames(n).any()) or regions[n].compile_mode.is_exported]
        memory = [n for n in fed if regions[n].carrier.carries_memory]
        return cls(tuple(returned), tuple(memory))

    def shape(self, sampled: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Shape a sample as :func:`denoise_future` returns it (context frames are the data).

        Returns:
            ``{region: value}`` for :attr:`returned`, plus ``"memory_out": {region: (B, ...) last
            frame}`` when :attr:`memory` is not empty.

        """
        out: dict[str, Any] = {name: sampled[name] for name in self.returned}
        if self.memory:
            out["memory_out"] = {name: sampled[name][:, -1] for name in self.memory}
        return out
