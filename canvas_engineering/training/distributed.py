"""What a canvas model does differently when distributed: FSDP2 sharding per block, DDP's unused parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["shard_per_block", "touch_unused_under_ddp"]


def shard_per_block(model: nn.Module, units: Iterable[nn.Module], mesh: Any) -> None:
    """Apply FSDP2 ``fully_shard`` to each unit, then to the whole model, over the data-parallel mesh.

    Args:
        model: the root module.
        units: its per-block units (looped blocks or backbone blocks, and the region codecs:
            they run outside ``forward``, and FSDP2 gathers a unit's parameters in that unit's
            forward hook, so each is its own unit).
        mesh: the strategy's device mesh (its ``"data_parallel"`` dimension when it has one).

    """
    from torch.distributed.fsdp import fully_shard  # needs a distributed build: import when sharding

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for unit in units:
        fully_shard(unit, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


def touch_unused_under_ddp(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """Under DDP, add a zero times one entry of every trainable parameter to ``loss``.

    Inactive loop embeddings (curriculum) and decoders of loss-free regions take no part in
    some steps; touching them with a zero keeps plain ``strategy="ddp"`` working without
    ``find_unused_parameters`` (their gradient stays 0). Elsewhere ``loss`` is returned as is.
    """
    from lightning.pytorch.strategies import DDPStrategy  # lightning is imported only when training

    if not isinstance(model.trainer.strategy, DDPStrategy):
        return loss
    return loss + 0.0 * sum(p.reshape(-1)[0] for p in model.parameters() if p.requires_grad)
