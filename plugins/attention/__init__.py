"""Built-in attention function types, registered through the ``canvas_engineering`` entry point.

Our own ``pyproject.toml`` declares ``attention = "canvas_engineering.plugins.attention"``
under ``[project.entry-points.canvas_engineering]``: the same path a third party uses.
"""

from __future__ import annotations

from canvas_engineering.plugins.attention.dot_product import (
    CogVideoXAttention,
    CosineAttention,
    CrossAttention,
    GatedAttention,
    LocalAttention,
    MixtureAttention,
    RandomFixedAttention,
    SigmoidAttention,
    SparseAttention,
)
from canvas_engineering.plugins.attention.state_space import HyenaAttention, MambaAttention, RWKVAttention
from canvas_engineering.plugins.attention.summaries import (
    CopyAttention,
    LinearAttention,
    NoneAttention,
    PerceiverAttention,
    PoolingAttention,
)

from canvas_engineering.plugin_host.host import hookimpl

BUILTIN_TYPES = (
    CrossAttention,
    LinearAttention,
    CosineAttention,
    SigmoidAttention,
    GatedAttention,
    PerceiverAttention,
    PoolingAttention,
    CopyAttention,
    MambaAttention,
    RWKVAttention,
    HyenaAttention,
    SparseAttention,
    LocalAttention,
    NoneAttention,
    RandomFixedAttention,
    MixtureAttention,
    CogVideoXAttention,
)


@hookimpl
def register_attention_types(registry) -> None:
    """Register the 16 declared types of the seed's lineup plus the CogVideoX-native one."""
    for cls in BUILTIN_TYPES:
        registry.add(cls.name, cls)
