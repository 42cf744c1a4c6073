"""The ``cogvideox`` backbone: diffusers' CogVideoX transformer blocks over canvas tokens.

Registered only when diffusers is importable (:func:`register_cogvideox` is a no-op
otherwise); diffusers is imported when a backbone is built, never at import.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from canvas_engineering.compilation.compiler import compile_topology
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.integrations.cogvideox import (
    FREEZE_STRATEGIES,
    FreezeStrategy,
    TextRule,
    install_canvas_processor,
    wrap_transformer_blocks,
)
from canvas_engineering.models.backbone import CanvasBackbone
from canvas_engineering.validation import check_choice, check_positive_int

__all__ = ["CogVideoXBackbone", "build_cogvideox_backbone", "register_cogvideox"]


class CogVideoXBackbone(CanvasBackbone):
    """CogVideoX transformer blocks (looped, canvas attention) between two projections.

    ``forward`` runs: ``proj_in`` (d_model -> inner_dim) on the canvas tokens; the model's own
    ``time_proj`` + ``time_embedding`` on the timestep; ``text_tokens`` learned tokens
    (text_tokens x inner_dim) as ``encoder_hidden_states``; every block of
    ``transformer.transformer_blocks`` (wrapped in
    :class:`~canvas_engineering.models.looped.LoopedBlockWrapper`, attention through
    :class:`~canvas_engineering.integrations.cogvideox.CanvasCogVideoXAttnProcessor` with the compiled
    topology); ``norm_final``; ``proj_out`` (inner_dim -> d_model, zero-initialised, so a new
    backbone outputs zeros). The transformer's patch embedding, output norm and output
    projection are not used and not kept. Models with rotary embeddings (CogVideoX-5B) get
    3D RoPE over the canvas grid (T, H, W).

    Freeze strategies act on the pretrained parts; ``proj_in``, ``proj_out`` and
    ``text_tokens`` are new and always train. ``"full"`` freezes every pretrained parameter
    except the loop embeddings; ``"half"`` freezes the patch embedding, which the backbone
    replaces by ``proj_in``, so it trains the same parameters as ``"none"``.

    Args:
        layout: the canvas layout (``d_model`` is the canvas token width).
        topology: the attention graph, compiled into the processor's plan.
        transformer: a ``CogVideoXTransformer3DModel`` (consumed: its blocks are wrapped).
        max_loops: most loops per block.
        freeze: ``"full"``, ``"half"`` or ``"none"``.
        text_tokens: number of learned text tokens (>= 1).
        text_rule: how text tokens take part in the plan; the default ``"condition"`` lets
            every canvas position read them but keeps them from relaying between positions, so
            the topology's blocking holds across layers.
        checkpoint: recompute each loop's activations in backward.

    Raises:
        CanvasValidationError: a bad argument (named with its value).

    Shapes: ``forward(tokens (B, N, d_model), timestep (B,) or ()) -> (B, N, d_model)``.

    """

    def __init__(
        self,
        layout: CanvasLayout,
        topology: CanvasTopology,
        transformer: nn.Module,
        *,
        max_loops: int = 3,
        freeze: FreezeStrategy = "full",
        text_tokens: int = 4,
        text_rule: TextRule = "condition",
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_choice(freeze, "backbone 'cogvideox': freeze", FREEZE_STRATEGIES)
        check_positive_int(text_tokens, "backbone 'cogvideox': text_tokens")
        self.layout = layout
        self.topology = topology
        self.plan = compile_topology(layout, topology)
        self.freeze_strategy = freeze
        config = transformer.config
        inner = config.num_attention_heads * config.attention_head_dim
        self.cogvideox_config = dict(config)
        wrap_transformer_blocks(transformer, max_loops=max_loops, checkpoint=checkpoint)
        self.processors = install_canvas_processor(transformer, self.plan, text_rule=text_rule)
        device = next(transformer.parameters()).device
        # the parts of the transformer the backbone runs (the rest is dropped)
        self.time_proj = transformer.time_proj
        self.time_embedding = transformer.time_embedding
        self.blocks = transformer.transformer_blocks
        self.norm_final = transformer.norm_final
        self.proj_in = nn.Linear(layout.d_model, inner, device=device)
        self.text_tokens = nn.Parameter(0.02 * torch.randn(text_tokens, inner, device=device))
        self.proj_out = nn.Linear(inner, layout.d_model, device=device)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        if config.use_rotary_positional_embeddings:
            from diffusers.models.embeddings import get_3d_rotary_pos_embed

            cos, sin = get_3d_rotary_pos_embed(
                embed_dim=config.attention_head_dim,
                crops_coords=((0, 0), (layout.H, layout.W)),
                grid_size=(layout.H, layout.W),
                temporal_size=layout.T,
                device=device,
            )  # each (T * H * W, head_dim), canvas order
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        else:
            self.register_buffer("rotary_cos", None, persistent=False)
            self.register_buffer("rotary_sin", None, persistent=False)
        self._apply_freeze(freeze)

    def _apply_freeze(self, freeze: str) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        if freeze == "full":
            keep = {id(p) for p in self.loop_parameters()}
            for module in (self.time_embedding, self.blocks, self.norm_final):
                for p in module.parameters():
                    p.requires_grad_(id(p) in keep)

    @property
    def trainable_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, tokens: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        """Map canvas tokens ``(B, N, d_model)`` at ``timestep`` (``(B,)`` or scalar) to ``(B, N, d_model)``."""
        n, d = self.layout.num_positions, self.layout.d_model
        if tokens.dim() != 3 or tokens.shape[1:] != (n, d):
            msg = f"backbone 'cogvideox': expected tokens of shape (B, {n}, {d}), got {tuple(tokens.shape)}"
            raise CanvasValidationError(msg)
        batch = tokens.shape[0]
        timestep = torch.as_tensor(timestep, device=tokens.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        if timestep.shape != (batch,):
            msg = (
                f"backbone 'cogvideox': timestep must have shape ({batch},) or be a scalar, "
                f"got {tuple(timestep.shape)}"
            )
            raise CanvasValidationError(msg)
        hidden = self.proj_in(tokens)  # (B, N, inner)
        temb = self.time_embedding(self.time_proj(timestep).to(hidden.dtype))  # (B, time_embed_dim)
        text = self.text_tokens.to(hidden.dtype).expand(batch, -1, -1)  # (B, text_tokens, inner)
        rotary = None if self.rotary_cos is None else (self.rotary_cos, self.rotary_sin)
        for block in self.blocks:
            hidden, text = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)
        return self.proj_out(self.norm_final(hidden))  # (B, N, d_model)


def build_cogvideox_backbone(
    layout: CanvasLayout,
    topology: CanvasTopology,
    config: dict[str, Any] | None = None,
    pretrained_path: str | None = None,
    max_loops: int = 3,
    freeze: FreezeStrategy = "full",
    text_tokens: int = 4,
    text_rule: TextRule = "condition",
    checkpoint: bool = False,
) -> CogVideoXBackbone:
    """Build a :class:`CogVideoXBackbone` from a CogVideoX config or pretrained weights.

    Args:
        layout: the canvas layout.
        topology: the attention graph.
        config: keyword arguments of ``CogVideoXTransformer3DModel`` (random weights); None
            (without ``pretrained_path``) is diffusers' default, the CogVideoX-2B architecture.
        pretrained_path: a CogVideoX checkpoint (hub id or directory), loaded with
            ``from_pretrained(path, subfolder="transformer")``; only when given.
        max_loops: most loops per block.
        freeze: ``"full"``, ``"half"`` or ``"none"``.
        text_tokens: number of learned text tokens.
        text_rule: ``"condition"`` (default), ``"global"`` or ``"isolated"``.
        checkpoint: recompute each loop's activations in backward.

    Raises:
        CanvasValidationError: both ``config`` and ``pretrained_path``, or a bad argument.

    """
    from diffusers import CogVideoXTransformer3DModel

    if config is not None and pretrained_path is not None:
        msg = "backbone 'cogvideox': pass either config (random weights) or pretrained_path, not both"
        raise CanvasValidationError(msg)
    if pretrained_path is not None:
        transformer = CogVideoXTransformer3DModel.from_pretrained(pretrained_path, subfolder="transformer")
    else:
        transformer = CogVideoXTransformer3DModel(**dict(config or {}))
    return CogVideoXBackbone(
        layout,
        topology,
        transformer,
        max_loops=max_loops,
        freeze=freeze,
        text_tokens=text_tokens,
        text_rule=text_rule,
        checkpoint=checkpoint,
    )


def register_cogvideox(registry) -> None:
    """Register ``cogvideox`` in a backbone registry when diffusers is installed; otherwise do nothing."""
    if importlib.util.find_spec("diffusers") is not None:
        registry.add("cogvideox", build_cogvideox_backbone)
