"""``ActionHead``: an MLP decoder from latent channels to action vectors.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.validation import check_choice, check_positive_int

__all__ = ["ActionHead"]

POOLS = ("mean", "none")


class ActionHead(nn.Module):
    """MLP decoder: latent channels -> robot actions (e.g. 6-DoF end-effector + gripper).

    ``n_layers`` Linear layers with GELU between them: ``latent_dim -> hidden_dim -> ... ->
    action_dim`` (one layer is a plain linear read-out). With ``pool="mean"`` the tokens are
    averaged before the MLP, giving one action per sample; with ``pool="none"`` every token
    is decoded.

    Args:
        latent_dim: channels of the input latents.
        action_dim: size of an action vector.
        hidden_dim: width of the hidden layers.
        n_layers: number of Linear layers (>= 1).
        pool: ``"mean"`` (one action per sample) or ``"none"`` (one action per token).

    Raises:
        CanvasValidationError: a bad argument (the message names it and its value), or
            latents whose last dimension is not ``latent_dim``.

    Shapes:
        ``(B, n_tokens, latent_dim) -> (B, action_dim)`` with ``pool="mean"``,
        ``(B, n_tokens, latent_dim) -> (B, n_tokens, action_dim)`` with ``pool="none"``,
        ``(B, latent_dim) -> (B, action_dim)`` with either.

    Example::

        >>> head = ActionHead(latent_dim=32, action_dim=7)
        >>> head(torch.randn(4, 5, 32)).shape
        torch.Size([4, 7])

    """

    def __init__(
        self,
        latent_dim: int,
        action_dim: int = 7,
        hidden_dim: int = 256,
        n_layers: int = 2,
        pool: Literal["mean", "none"] = "mean",
    ) -> None:
        super().__init__()
        self.latent_dim = check_positive_int(latent_dim, "ActionHead: latent_dim")
        self.action_dim = check_positive_int(action_dim, "ActionHead: action_dim")
        self.hidden_dim = check_positive_int(hidden_dim, "ActionHead: hidden_dim")
        self.n_layers = check_positive_int(n_layers, "ActionHead: n_layers")
        check_choice(pool, "ActionHead: pool", POOLS)
        self.pool = pool
        widths = [latent_dim] + [hidden_dim] * (n_layers - 1) + [action_dim]
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(w_in, w_out))
        self.mlp = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode ``latents`` (see the class docstring for shapes)."""
        if latents.dim() not in (2, 3) or latents.shape[-1] != self.latent_dim:
            msg = (
                f"ActionHead expects latents of shape (B, n_tokens, {self.latent_dim}) or "
                f"(B, {self.latent_dim}), got {tuple(latents.shape)}"
            )
            raise CanvasValidationError(msg)
        if latents.dim() == 3 and self.pool == "mean":
            latents = latents.mean(dim=1)  # (B, latent_dim)
        return self.mlp(latents)

    def extra_repr(self) -> str:
        """Return the pooling mode, for ``repr``."""
        return f"pool={self.pool!r}"
