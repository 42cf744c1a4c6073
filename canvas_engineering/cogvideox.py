"""Published module path ``canvas_engineering.cogvideox``: the CogVideoX looped block.

A compatibility alias of :mod:`canvas_engineering.integrations.cogvideox` and
:mod:`canvas_engineering.models.looped`. The published ``LoopedCogVideoXBlock`` and
``detect_inner_dim`` have no module of their own here: ``LoopedCogVideoXBlock`` is a thin
adapter taking the published constructor arguments and building our
:class:`~canvas_engineering.models.looped.LoopedBlockWrapper` (which loops CogVideoX's two
streams itself); ``detect_inner_dim`` reads the width the way ``graft_looped_blocks`` does.
"""

from __future__ import annotations

from torch import nn

from canvas_engineering.integrations.cogvideox import graft_looped_blocks
from canvas_engineering.models.looped import LoopedBlockWrapper, infer_width

__all__ = ["LoopedCogVideoXBlock", "detect_inner_dim", "graft_looped_blocks"]


def detect_inner_dim(transformer: nn.Module) -> int:
    """Token width of a CogVideoX transformer: ``heads * head_dim`` from its config, else its first block's width.

    Raises:
        CanvasValidationError: the width cannot be inferred (no config and no LayerNorm or Linear).

    """
    config = getattr(transformer, "config", None)
    heads, head_dim = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    if isinstance(heads, int) and isinstance(head_dim, int):
        return heads * head_dim
    return infer_width(transformer.transformer_blocks[0])


class LoopedCogVideoXBlock(LoopedBlockWrapper):
    """The published constructor ``(original_block, block_idx, max_loops, inner_dim)`` over ``LoopedBlockWrapper``.

    Both streams (video and text tokens) get zero-initialised loop embeddings, so one loop
    reproduces the wrapped block exactly. Unlike the published class there is no per-loop
    sigmoid gate (whose initial 0.5 mix changed the pretrained block's output at loop 2+).

    Args:
        original_block: a CogVideoX transformer block.
        block_idx: the block's index in the transformer (kept as ``block_idx``).
        max_loops: most passes (>= 1).
        inner_dim: token width (``None``: inferred from the block).

    """

    def __init__(self, original_block: nn.Module, block_idx: int = 0, max_loops: int = 3, inner_dim: int | None = None):
        width = inner_dim if inner_dim is not None else infer_width(original_block)
        super().__init__(original_block, max_loops=max_loops, d_model=width, stream_width=width)
        self.block_idx = block_idx

    @property
    def original(self) -> nn.Module:
        """The wrapped block (the published attribute name)."""
        return self.block

    def trainable_params(self) -> int:
        """Return the number of loop parameters (loop embeddings of both streams)."""
        return sum(p.numel() for p in (self.loop_embeddings, self.stream_embeddings) if p is not None)
