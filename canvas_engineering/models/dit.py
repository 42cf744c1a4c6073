"""The from-scratch canvas diffusion transformer: ``CanvasBlock`` and ``CanvasDiT``.

``CanvasDiT`` is a DiT (Peebles & Xie, adaLN-Zero) whose attention is a
:class:`~canvas_engineering.attention.canvas_attention.CanvasAttention` running the compiled topology,
and whose blocks can be looped (:class:`~canvas_engineering.models.looped.LoopedBlockWrapper`).

Shapes: ``B`` batch, ``N`` canvas positions (``layout.num_positions``), ``d`` token width
(``layout.d_model``).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from canvas_engineering.attention.attention_type import check_input_dtype
from canvas_engineering.attention.canvas_attention import CanvasAttention, resolve_plan
from canvas_engineering.attention.kernels import KERNELS, Kernel
from canvas_engineering.compilation.compiler import AttentionPlan, compile_topology
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.spatiotemporal_canvas import SpatiotemporalCanvas, sinusoidal_encoding
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.backbone import CanvasBackbone
from canvas_engineering.models.looped import LoopedBlockWrapper
from canvas_engineering.plugin_host.host import PluginRegistry
from canvas_engineering.validation import check_finite_float, check_positive_int, is_int

__all__ = ["CanvasBlock", "CanvasDiT", "TimestepEmbedding"]

LoopBlocks = Literal["all", "none"] | tuple[int, int]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (B, N, d)`` scaled and shifted per sample by ``(B, 1, d)`` tensors."""
    return x * (1 + scale) + shift


class TimestepEmbedding(nn.Module):
    """Diffusion timestep -> ``(B, d_model)`` vector: sinusoidal features, then an MLP.

    Same construction as diffusers' ``Timesteps`` + ``TimestepEmbedding`` (sin/cos of the
    timestep at geometric frequencies, then Linear-SiLU-Linear). It is written here with
    :func:`~canvas_engineering.declare.spatiotemporal_canvas.sinusoidal_encoding` so the core keeps diffusers
    optional (an extra) and out of ``import canvas_engineering``.

    Args:
        d_model: output width.
        frequency_dim: number of sinusoidal features.

    """

    def __init__(self, d_model: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = check_positive_int(frequency_dim, "TimestepEmbedding: frequency_dim")
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        """``timestep (B,)`` (integer or fractional) -> ``(B, d_model)``."""
        freqs = sinusoidal_encoding(timestep.reshape(-1), self.frequency_dim)  # (B, f), on timestep's device
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


class CanvasBlock(nn.Module):
    """Pre-norm DiT block with adaLN-Zero timestep conditioning and canvas attention.

    ``x + gate_a * attn(modulate(norm(x)))`` then ``x + gate_m * mlp(modulate(norm(x)))``;
    shifts, scales and gates come from the timestep embedding through one Linear that starts
    at zero, so a fresh block is the identity (DiT's adaLN-Zero).

    Args:
        layout: the canvas layout, or an already compiled :class:`AttentionPlan` (what
            :class:`CanvasDiT` passes, so its blocks share one plan).
        topology: the attention graph (``None`` when ``layout`` is a plan).
        d_model: token width (defaults to ``layout.d_model``).
        n_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``d_model``.
        kernel: attention kernel (``"auto"``, ``"flex"``, ``"tiled"`` or ``"dense"``).
        type_config: per-attention-type options, ``{"local_attention": {"window": 2}}``.
        write_modes: one write mode per connection (``"add"``, ``"gate"``, ``"replace"``; see
            :class:`CanvasAttention`); ``None``: all ``"add"``.
        registry: the plugin registry the attention types come from (default:
            :func:`canvas_engineering.plugin_host.host.get_registry`).

    Shapes: ``forward(x (B, N, d), temb (B, d), beta) -> (B, N, d)``.

    """

    def __init__(
        self,
        layout: CanvasLayout | AttentionPlan,
        topology: CanvasTopology | None = None,
        d_model: int | None = None,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        kernel: Kernel = "auto",
        type_config: Mapping[str, Mapping[str, Any]] | None = None,
        write_modes: Sequence[str] | None = None,
        *,
        registry: PluginRegistry | None = None,
    ) -> None:
        super().__init__()
        plan = resolve_plan(layout, topology, "CanvasBlock")
        d = d_model if d_model is not None else plan.layout.d_model
        check_positive_int(d, "CanvasBlock: d_model")
        # finite too: an infinite ratio would only fail later, inside round(), with a bare OverflowError
        check_finite_float(
            mlp_ratio, "CanvasBlock: mlp_ratio", minimum=0, open_min=True, rule="a positive number (finite)"
        )
        self.d_model = d
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = CanvasAttention(plan, None, d, n_heads, kernel, type_config, write_modes, registry=registry)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = max(1, round(d * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """Update canvas tokens ``x (B, N, d)`` given the timestep embedding ``temb (B, d)``.

        ``beta`` multiplies the attention logits (sharpening; set per loop by the wrapper).
        """
        mod = self.modulation(temb)[:, None, :]  # (B, 1, 6d)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)  # each (B, 1, d)
        x = x + gate_a * self.attn(_modulate(self.norm1(x), shift_a, scale_a), beta)
        return x + gate_m * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


def _looped_range(loop_blocks: object, depth: int) -> range:
    """Return the indices of the blocks to wrap for ``loop_blocks`` (``"all"``, ``"none"`` or ``(start, stop)``)."""
    if loop_blocks == "all":
        return range(depth)
    if loop_blocks == "none":
        return range(0)
    if (
        isinstance(loop_blocks, (tuple, list))
        and len(loop_blocks) == 2
        and all(is_int(i) for i in loop_blocks)
        and 0 <= loop_blocks[0] < loop_blocks[1] <= depth
    ):
        return range(loop_blocks[0], loop_blocks[1])
    msg = (
        f"CanvasDiT: loop_blocks={loop_blocks!r} must be 'all', 'none' or a (start, stop) pair of "
        f"block indices with 0 <= start < stop <= depth={depth} (stop excluded, like range)"
    )
    raise CanvasValidationError(msg)


class CanvasDiT(CanvasBackbone):
    """Diffusion transformer over a canvas, with looped blocks running the compiled topology.

    ``forward`` adds each position's encodings (real time, row, column, period, region;
    :meth:`SpatiotemporalCanvas.encode`) to the canvas content, runs the blocks conditioned
    on the timestep, then an adaLN final norm and a zero-initialised output Linear (so a
    fresh model predicts 0).

    Every block in ``loop_blocks`` is wrapped in a :class:`LoopedBlockWrapper`, also when
    ``max_loops == 1``: the curriculum and sharpening callbacks then treat every model alike,
    and with one loop the wrapper adds a single (zero-initialised, trainable) input bias.

    Args:
        layout: the canvas layout (its ``d_model`` is the token width).
        topology: the attention graph.
        depth: number of blocks.
        n_heads: attention heads (must divide ``layout.d_model``).
        mlp_ratio: MLP hidden width as a multiple of ``d_model``.
        max_loops: most passes of each looped block.
        loop_blocks: blocks to loop: ``"all"``, ``"none"`` or ``(start, stop)`` (stop excluded).
        checkpoint: recompute each loop's activations in backward (saves memory).
        kernel: attention kernel (``"auto"``: flex on GPU, tile-packed SDPA on CPU).
        type_config: per-attention-type options, ``{"local_attention": {"window": 2}}``.
        write_modes: one write mode per connection of ``topology`` (see
            :class:`CanvasAttention`); ``None``: all ``"add"``. ``CanvasModule`` passes a
            program's write modes here.
        input_projection: pass the content through a learned Linear before adding the
            position and region encodings (DiT's patch embedding; without it the noise of
            noised tokens drowns their position encodings).
        registry: the plugin registry the attention types come from (default:
            :func:`canvas_engineering.plugin_host.host.get_registry`).

    Attributes:
        plan: the compiled :class:`AttentionPlan`, compiled once and shared by every block
            (and so by every loop of a looped block).
        canvas: the :class:`SpatiotemporalCanvas` holding the position/region encodings.
        blocks: the blocks in order (looped ones are :class:`LoopedBlockWrapper`).

    Raises:
        CanvasValidationError: a bad argument (the message names it and its value).

    Shapes: ``forward(tokens (B, N, d), timestep (B,) or ()) -> (B, N, d)``.

    Example::

        >>> from canvas_engineering.typed.presets import robot_manipulation_schema
        >>> s = robot_manipulation_schema()
        >>> model = CanvasDiT(s.layout, s.topology, depth=2, max_loops=3)
        >>> model.set_loops(2)
        >>> model(torch.randn(1, 320, 256), torch.tensor([10])).shape
        torch.Size([1, 320, 256])

    """

    def __init__(
        self,
        layout: CanvasLayout,
        topology: CanvasTopology,
        *,
        depth: int = 4,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_loops: int = 1,
        loop_blocks: LoopBlocks = "all",
        checkpoint: bool = False,
        kernel: Kernel = "auto",
        type_config: Mapping[str, Mapping[str, Any]] | None = None,
        write_modes: Sequence[str] | None = None,
        input_projection: bool = True,
        registry: PluginRegistry | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(layout, CanvasLayout):
            msg = f"CanvasDiT: layout must be a CanvasLayout, got {type(layout).__name__}"
            raise CanvasValidationError(msg)
        if not isinstance(topology, CanvasTopology):
            msg = f"CanvasDiT: topology must be a CanvasTopology, got {type(topology).__name__}"
            raise CanvasValidationError(msg)
        for name, value in (("depth", depth), ("n_heads", n_heads), ("max_loops", max_loops)):
            check_positive_int(value, f"CanvasDiT: {name}")
        if kernel not in KERNELS:
            msg = f"CanvasDiT: kernel={kernel!r} must be one of {', '.join(KERNELS)}"
            raise CanvasValidationError(msg)
        looped = _looped_range(loop_blocks, depth)
        d = layout.d_model
        if d % n_heads:
            msg = f"CanvasDiT: n_heads ({n_heads}) must divide layout.d_model ({d})"
            raise CanvasValidationError(msg)
        self.layout = layout
        self.topology = topology
        self.d_model = d
        self.plan = compile_topology(layout, topology)  # once: every block runs this plan
        self.canvas = SpatiotemporalCanvas(layout)
        self.time_embed = TimestepEmbedding(d)
        # Content goes through a learned map before the position encodings are added (as DiT's
        # patch embedding does): noised tokens fill every dimension, and without this map their
        # noise drowns the positions, so a pure-noise query cannot find its own place to read.
        self.input_proj = nn.Linear(d, d) if input_projection else nn.Identity()
        blocks: list[nn.Module] = []
        for i in range(depth):
            block = CanvasBlock(
                self.plan, None, d, n_heads, mlp_ratio, kernel, type_config, write_modes, registry=registry
            )
            blocks.append(LoopedBlockWrapper(block, max_loops, d, checkpoint) if i in looped else block)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, d)
        for linear in (self.final_modulation[1], self.out):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, tokens: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        """Predict ``(B, N, d)`` from canvas content ``tokens (B, N, d)`` at ``timestep`` (``(B,)`` or scalar).

        Runs under ``torch.autocast`` and as a module converted with ``module.to(dtype)``.

        Raises:
            CanvasValidationError: ``tokens`` or ``timestep`` has the wrong shape.
            PrecisionError: ``tokens`` are not floating point, or (outside autocast) not of the weights' dtype.

        """
        self.canvas.check_canvas(tokens)
        check_input_dtype(tokens, self, "CanvasDiT")
        x = self.canvas.encode(self.input_proj(tokens))  # (B, N, d)
        batch = x.shape[0]
        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        if timestep.shape != (batch,):
            msg = f"CanvasDiT: timestep must have shape ({batch},) or be a scalar, got {tuple(timestep.shape)}"
            raise CanvasValidationError(msg)
        temb = self.time_embed(timestep).to(x.dtype)  # (B, d)
        for block in self.blocks:
            x = block(x, temb)
        shift, scale = self.final_modulation(temb)[:, None, :].chunk(2, dim=-1)  # each (B, 1, d)
        return self.out(_modulate(self.final_norm(x), shift, scale))

    def extra_repr(self) -> str:
        """Depth, width and loops, for ``print(model)``."""
        return f"depth={len(self.blocks)}, d_model={self.d_model}, max_loops={self.max_loops}"
