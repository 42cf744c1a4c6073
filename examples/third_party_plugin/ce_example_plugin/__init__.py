"""Example canvas-engineering plugin: the ``talking_heads`` attention type.

Installed, this distribution's entry point (``example = "ce_example_plugin"`` in the
``canvas_engineering`` group) makes ``Connection("a", "b", fn="talking_heads")`` valid and
runnable by ``CanvasAttention``; ``canvas-engineering plugins`` lists it with this
distribution's name and version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from canvas_engineering import AttentionType, hookimpl

if TYPE_CHECKING:
    from canvas_engineering.compilation.attention_mask import AttentionMask
    from canvas_engineering.plugin_host.host import KindRegistry

__all__ = ["TalkingHeadsAttention", "register_attention_types"]


class TalkingHeadsAttention(AttentionType):
    """Softmax attention whose logits are mixed across heads (talking-heads attention).

    Each head's attention logits are replaced by a learned linear combination of all heads'
    logits (an ``n_heads x n_heads`` matrix initialised to the identity, so a fresh layer is
    plain multi-head attention) before the mask and the softmax. Mixing acts on the raw
    logits of the same (query, key) pair, whose mask is shared by every head; the mask's
    ``log(weight)`` bias (``-inf`` where blocked) is added afterwards, so blocked keys stay
    at ``-inf`` and never receive weight.

    Args:
        d_model: token width.
        n_heads: number of heads (must divide ``d_model``).

    Shapes: ``forward(queries (B, nq, d_model), keys (B, nk, d_model), mask, beta) -> (B, nq, d_model)``.

    """

    name = "talking_heads"
    score_based = True

    def __init__(self, d_model: int, n_heads: int, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)  # validates; sets d_model, n_heads, head_dim
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        #: (H_out, H_in) logit mixing matrix, identity at init
        self.head_mix = nn.Parameter(torch.eye(n_heads))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, n, hd)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """Return (B, nq, d_model) updates for ``queries`` from ``keys`` under ``mask``."""
        b, nq, d = queries.shape
        q = self._heads(self.q_proj(queries))  # (B, H, nq, hd)
        k = self._heads(self.k_proj(keys))  # (B, H, nk, hd)
        v = self._heads(self.v_proj(keys))  # (B, H, nk, hd)
        logits = (q @ k.transpose(-2, -1)) * (beta * self.head_dim**-0.5)  # (B, H, nq, nk), finite
        mixed = torch.einsum("gh,bhqk->bgqk", self.head_mix, logits)  # (B, H, nq, nk), finite
        bias = mask.additive_bias().to(device=logits.device, dtype=logits.dtype)  # (nq, nk), -inf blocked
        has_key = mask.row_has_key.to(logits.device)[:, None]  # (nq, 1)
        scores = (mixed + bias).masked_fill(~has_key, 0.0)  # rows without keys: avoid NaN
        probs = torch.softmax(scores, dim=-1) * has_key  # (B, H, nq, nk); keyless rows get 0
        out = (probs @ v).transpose(1, 2).reshape(b, nq, d)  # (B, nq, d_model)
        return self.out_proj(out)


@hookimpl
def register_attention_types(registry: KindRegistry) -> None:
    """Register ``talking_heads``."""
    registry.add("talking_heads", TalkingHeadsAttention)
