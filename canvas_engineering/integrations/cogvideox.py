"""Graft looped blocks and canvas attention onto diffusers' ``CogVideoXTransformer3DModel``.

Three pieces, usable together or alone:

* :func:`graft_looped_blocks` wraps every ``model.transformer_blocks[i]`` in a
  :class:`~canvas_engineering.models.looped.LoopedBlockWrapper` (in place, so ``model.forward``
  loops), installs :class:`CanvasCogVideoXAttnProcessor` on every attention layer, applies a
  freeze strategy and returns the looped blocks with a fresh :class:`ActionHead`.
* :class:`CanvasCogVideoXAttnProcessor` is a diffusers attention processor computing what
  ``CogVideoXAttnProcessor2_0`` computes, plus a per-call sharpening factor ``beta`` and a
  canvas :class:`~canvas_engineering.compilation.compiler.AttentionPlan`.
* :func:`freeze_full` / :func:`freeze_half` / :func:`freeze_none` are the seed's freeze
  strategies; each returns the model's trainable parameter count.

Decisions (also in the docstrings below):

* **Loop embeddings.** Each wrapped block gets ``loop_embeddings`` (max_loops x inner_dim)
  for the video stream (``hidden_states``) *and* ``stream_embeddings`` (max_loops x
  inner_dim) for the text stream (``encoder_hidden_states``): both streams are block inputs
  that flow from one loop to the next, and the text tokens live at the same width
  (``patch_embed.text_proj`` maps them to inner_dim). For CogVideoX-2B that is
  30 x 3 x (1920 + 1920) = 345,600 parameters; with the action head below the "full" budget
  is 351,751, the seed README's "350K".
* **Action head.** It reads latent channels: ``ActionHead(latent_dim=config.out_channels)``
  (16 for CogVideoX), applied to the model's output latents as tokens
  ``rearrange(sample, "b f c h w -> b (f h w) c")``. It is float32 and lives on the model's
  device; it is returned, not attached to the model.
* **Text rule** (how the ``L`` text tokens, which CogVideoX puts before the ``N`` video tokens,
  take part in a canvas plan):

  - ``"global"``: text queries attend every token; every video query attends every text
    token (CogVideoX's own behaviour). Across layers text can relay information between
    canvas positions the plan separates (in one layer the plan is exact).
  - ``"condition"``: video queries attend every text token; text queries attend text only.
    Text conditions the canvas but never reads it, so the plan's blocking holds across any
    number of layers (a position only sees what the plan's transitive closure allows).
  - ``"isolated"``: text attends text only and video attends video only (by the plan).

  Text-to-text and video-to-text pairs have weight 1; video-to-video pairs take the plan's
  weights. Connection ``fn`` is ignored: inside a pretrained CogVideoX every allowed pair
  runs through the model's own softmax attention.

The processor runs the plan through the same kernels as
:class:`~canvas_engineering.attention.canvas_attention.CanvasAttention`, chosen by the same rule
(:func:`~canvas_engineering.attention.kernels.resolve_kernel`: FlexAttention on CUDA, tile-packed or, for
small sequences, dense SDPA on the CPU). It builds one class-structured
:class:`~canvas_engineering.compilation.attention_mask.AttentionMask` over ``[video (N), text (L)]`` per
(plan, text length), with the text tokens as one more class, so memory grows with the allowed
tiles, not as ``(L + N)^2`` (a full-size CogVideoX-2B canvas, N = 17,550 and L = 226, would need
a 1.2 GB float32 dense mask; ``benchmarks/looped.py`` measures both). A plan that allows every
pair with weight 1 under ``"global"`` skips the mask entirely, so it runs exactly the stock
computation.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from canvas_engineering.attention.kernels import softmax_attention
from canvas_engineering.compilation.attention_mask import AttentionMask, check_kernel
from canvas_engineering.compilation.compiler import AttentionPlan, compile_topology
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.errors import CanvasValidationError, GraftedSaveError
from canvas_engineering.models.action_head import ActionHead
from canvas_engineering.models.looped import LoopedBlockWrapper
from canvas_engineering.validation import check_choice, check_finite_float, check_positive_int

__all__ = [
    "FREEZE_STRATEGIES",
    "TEXT_RULES",
    "CanvasCogVideoXAttnProcessor",
    "FreezeStrategy",
    "TextRule",
    "count_trainable",
    "freeze_full",
    "freeze_half",
    "freeze_none",
    "graft_looped_blocks",
    "install_canvas_processor",
    "joint_attention_mask",
    "looped_wrappers",
    "wrap_transformer_blocks",
]

logger = logging.getLogger(__name__)

FreezeStrategy = Literal["full", "half", "none"]
TextRule = Literal["global", "condition", "isolated"]
#: the seed README's freeze strategies: everything but the loops / only patch_embed / nothing
FREEZE_STRATEGIES: tuple[str, ...] = ("full", "half", "none")
#: how text tokens take part in a canvas plan (see the module docstring)
TEXT_RULES: tuple[str, ...] = ("global", "condition", "isolated")

#: a canvas for the processor: a compiled plan, ``(layout, topology)``, or None (dense)
CanvasSpec = AttentionPlan | tuple[CanvasLayout, CanvasTopology] | None


# -- freeze strategies -------------------------------------------------------------


def count_trainable(module: nn.Module) -> int:
    """Count the parameters of ``module`` with ``requires_grad`` (shared ones once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def looped_wrappers(model: nn.Module) -> list[LoopedBlockWrapper]:
    """Every :class:`LoopedBlockWrapper` inside ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, LoopedBlockWrapper)]


def freeze_full(model: nn.Module) -> int:
    """Freeze everything except the loop parameters (loop and stream embeddings).

    Returns:
        the trainable parameter count of ``model`` afterwards.

    Raises:
        CanvasValidationError: ``model`` has no looped blocks (nothing would stay trainable).

    """
    keep = {id(p) for w in looped_wrappers(model) for p in w.loop_parameters()}
    if not keep:
        msg = (
            f"freeze_full: {type(model).__name__} has no looped blocks, so every parameter would be "
            "frozen; call graft_looped_blocks(model) first"
        )
        raise CanvasValidationError(msg)
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return count_trainable(model)


def freeze_half(model: nn.Module) -> int:
    """Freeze only the patch embedding (``model.patch_embed``); everything else trains.

    Returns:
        the trainable parameter count of ``model`` afterwards.

    Raises:
        CanvasValidationError: ``model`` has no ``patch_embed`` module.

    """
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(patch_embed, nn.Module):
        msg = (
            f"freeze_half: {type(model).__name__} has no `patch_embed` module to freeze "
            "(expected a CogVideoX transformer)"
        )
        raise CanvasValidationError(msg)
    frozen = {id(p) for p in patch_embed.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return count_trainable(model)


def freeze_none(model: nn.Module) -> int:
    """Make every parameter trainable (full fine-tuning); returns the trainable count."""
    for p in model.parameters():
        p.requires_grad_(True)
    return count_trainable(model)


_FREEZERS: dict[str, Callable[[nn.Module], int]] = {"full": freeze_full, "half": freeze_half, "none": freeze_none}


# -- the attention processor ---------------------------------------------------------


def _resolve_plan(canvas: object, where: str) -> AttentionPlan | None:
    if canvas is None or isinstance(canvas, AttentionPlan):
        return canvas
    if isinstance(canvas, tuple) and len(canvas) == 2:
        layout, topology = canvas
        if isinstance(layout, CanvasLayout) and isinstance(topology, CanvasTopology):
            return compile_topology(layout, topology)
    msg = f"{where}: canvas must be an AttentionPlan, a (CanvasLayout, CanvasTopology) pair or None, got {canvas!r}"
    raise CanvasValidationError(msg)


def _check_text_rule(text_rule: object, where: str) -> str:
    return str(check_choice(text_rule, f"{where}: text_rule", TEXT_RULES))


def _plan_is_dense(plan: AttentionPlan) -> bool:
    """Every pair of occupied classes allowed with weight exactly 1."""
    present = plan.class_counts > 0
    return bool((plan.weight_table[present][:, present] == 1).all())


def joint_attention_mask(
    plan: AttentionPlan | None, text_len: int, video_len: int, text_rule: str, kernel: str = "auto"
) -> AttentionMask:
    """Build the mask over the joint sequence ``[video (N), text (L)]`` (video first, see below).

    Classes are the plan's (region, frame) classes for the video tokens plus one class for
    all text tokens, so the mask stays class-structured and the kernels never build an
    (L + N)^2 tensor. Video-to-video pairs take the plan's weights (every pair, weight 1, when
    ``plan`` is None); text pairs have weight 1 where ``text_rule`` allows them (see
    :mod:`canvas_engineering.integrations.cogvideox`). Video comes first so that the frames start on tile
    boundaries (the text forms a trailing segment), which keeps the tiles of a frame-aligned
    plan whole.

    Args:
        plan: the canvas plan over the video tokens, or None (dense video attention).
        text_len: L.
        video_len: N (must equal ``plan.num_positions`` when there is a plan).
        text_rule: ``"global"``, ``"condition"`` or ``"isolated"``.
        kernel: the kernel the mask prefers (see :data:`~canvas_engineering.attention.kernels.KERNELS`).

    """
    if plan is None:
        video_classes = torch.zeros(video_len, dtype=torch.long)
        video_table = torch.ones(1, 1)
        video_coords = torch.zeros(video_len, 5, dtype=torch.long)
        frames = 1
    else:
        video_classes, video_table, video_coords, frames = plan.class_ids, plan.weight_table, plan.coords, plan.layout.T
    c = video_table.shape[0]  # the text class
    table = torch.zeros(c + 1, c + 1)
    table[:c, :c] = video_table
    table[c, c] = 1.0  # text reads text under every rule
    if text_rule in ("global", "condition"):
        table[:c, c] = 1.0  # the canvas reads the text
    if text_rule == "global":
        table[c, :c] = 1.0  # the text reads the canvas
    text_coords = torch.zeros(text_len, 5, dtype=torch.long)
    text_coords[:, 0] = text_coords[:, 3] = frames  # after the last frame, as a segment of its own
    text_coords[:, 4] = torch.arange(text_len)
    classes = torch.cat([video_classes, torch.full((text_len,), c)])
    positions = torch.arange(video_len + text_len)
    coords = torch.cat([video_coords, text_coords])
    return AttentionMask(table, positions, positions, classes, coords, check_kernel(kernel, "joint_attention_mask"))


class CanvasCogVideoXAttnProcessor:
    """``CogVideoXAttnProcessor2_0`` with a canvas plan and a sharpening factor.

    Computes, per head, ``softmax(beta * q.k / sqrt(head_dim) + log w) v`` over the joint
    sequence of text (L) and video (N) tokens, where ``w`` is 0 (bias ``-inf``) for blocked
    pairs; a query with no allowed key gets 0. Video token ``i`` is canvas position ``i``:
    CogVideoX orders video tokens frame-major, then patch row, then patch column, which is the
    canvas order ``t * H * W + h * W + w``, so use a layout with T = latent frames (over
    ``patch_size_t`` for CogVideoX 1.5), H = latent height / patch_size and W = latent width /
    patch_size. Text tokens follow ``text_rule`` (see :mod:`canvas_engineering.integrations.cogvideox`).

    With a mask, the attention runs through the kernels of
    :class:`~canvas_engineering.attention.canvas_attention.CanvasAttention`
    (:func:`~canvas_engineering.attention.kernels.softmax_attention` over :func:`joint_attention_mask`,
    kernel chosen by :func:`~canvas_engineering.attention.kernels.resolve_kernel`); the mask and its
    device views are built once per (plan, text length) and (device, dtype). An explicit
    ``attention_mask`` argument is added to the dense view instead (it is (L + N)^2 already).

    ``beta`` and ``canvas_plan`` are declared keyword arguments of ``__call__``: diffusers'
    ``Attention.forward`` silently drops undeclared ones. A
    :class:`~canvas_engineering.models.looped.LoopedBlockWrapper` sends ``beta`` through the block's
    ``attention_kwargs``; ``last_beta`` records what arrived.

    Args:
        plan: the canvas plan over the N video tokens; None attends densely (stock behaviour).
        text_rule: ``"global"``, ``"condition"`` or ``"isolated"``.
        skip_dense_mask: when the plan allows every pair with weight 1 and the rule is
            ``"global"``, call SDPA without a mask (exactly the stock computation).
        kernel: ``"auto"`` (the rule of :func:`~canvas_engineering.attention.kernels.resolve_kernel`),
            ``"flex"``, ``"tiled"`` or ``"dense"``.

    Attributes:
        last_beta: the ``beta`` of the most recent call (None before the first).
        calls: number of calls so far.

    Raises:
        CanvasValidationError: bad ``text_rule`` or kernel; at call time, a plan whose
            ``T*H*W`` differs from the number of video tokens, or a ``beta`` that is not a
            finite number > 0.

    """

    def __init__(
        self,
        plan: AttentionPlan | None = None,
        text_rule: TextRule = "global",
        skip_dense_mask: bool = True,
        kernel: str = "auto",
    ) -> None:
        self.plan = _resolve_plan(plan, "CanvasCogVideoXAttnProcessor")
        self.text_rule = _check_text_rule(text_rule, "CanvasCogVideoXAttnProcessor")
        self.skip_dense_mask = skip_dense_mask
        self.kernel = check_kernel(kernel, "CanvasCogVideoXAttnProcessor")
        self.last_beta: float | None = None
        self.calls = 0
        self._masks: dict[tuple[Any, ...], AttentionMask | None] = {}

    def __repr__(self) -> str:
        plan = "dense" if self.plan is None else f"plan over {self.plan.num_positions} positions"
        return f"CanvasCogVideoXAttnProcessor({plan}, text_rule={self.text_rule!r})"

    def joint_mask(self, plan: AttentionPlan | None, text_len: int, video_len: int) -> AttentionMask | None:
        """Return the :func:`joint_attention_mask` a call runs (None: no mask, the stock computation).

        Cached per (plan, text length, video length); the mask caches its device views.

        Raises:
            CanvasValidationError: the plan's ``T*H*W`` differs from ``video_len``.

        """
        if plan is not None and plan.num_positions != video_len:
            layout = plan.layout
            msg = (
                f"CanvasCogVideoXAttnProcessor: the canvas layout has T*H*W = {layout.T}*{layout.H}*{layout.W} = "
                f"{plan.num_positions} positions but the attention received {video_len} video tokens "
                f"(after {text_len} text tokens); use T = latent frames, H = latent height / patch_size, "
                "W = latent width / patch_size"
            )
            raise CanvasValidationError(msg)
        key = (plan, text_len, video_len)
        if key not in self._masks:
            dense = plan is None or _plan_is_dense(plan)
            skip = self.text_rule == "global" and dense and self.skip_dense_mask
            if len(self._masks) >= 8:  # a few (plan, text length) pairs in use at a time
                self._masks.clear()
            joint = None if skip else joint_attention_mask(plan, text_len, video_len, self.text_rule, self.kernel)
            self._masks[key] = joint
        return self._masks[key]

    def mask(
        self,
        plan: AttentionPlan | None,
        text_len: int,
        video_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Dense ``(bias, row_valid)`` over ``[text, video]`` (CogVideoX's order), for inspection.

        Builds (L + N)^2 floats on every call; the processor itself runs :meth:`joint_mask`
        through the kernels and never builds this.

        Returns:
            bias: (S, S) additive float mask (log weight, ``-inf`` blocked, 0 on rows with no
                allowed key), or None when no mask is needed.
            row_valid: (S,) bool, rows with at least one allowed key, or None when all are.

        Raises:
            CanvasValidationError: the plan's ``T*H*W`` differs from ``video_len``.

        """
        joint = self.joint_mask(plan, text_len, video_len)
        if joint is None:
            return None, None
        # [video, text] -> [text, video] on both axes
        weights = torch.roll(joint.dense_weights(), shifts=(text_len, text_len), dims=(0, 1))
        valid = (weights > 0).any(1)
        bias = weights.log()
        bias[~valid] = 0.0  # rows with no key: any finite row; the output is zeroed
        return bias.to(device, dtype), None if bool(valid.all()) else valid.to(device)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        beta: float = 1.0,
        canvas_plan: AttentionPlan | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend over text and video tokens and return ``(video (B, N, D), text (B, L, D))``.

        Args:
            attn: the diffusers ``Attention`` module (its projections and q/k norms are used).
            hidden_states: (B, N, D) video tokens.
            encoder_hidden_states: (B, L, D) text tokens.
            attention_mask: optional extra mask, as ``CogVideoXAttnProcessor2_0`` takes it
                (over ``[text, video]``).
            image_rotary_emb: rotary embeddings of the video tokens (CogVideoX-5B), or None.
            beta: sharpening factor multiplying the attention logits.
            canvas_plan: overrides the processor's plan for this call.

        """
        beta = check_finite_float(beta, "CanvasCogVideoXAttnProcessor: beta", minimum=0, open_min=True)
        self.last_beta = beta
        self.calls += 1
        plan = canvas_plan if canvas_plan is not None else self.plan
        text_len, video_len = encoder_hidden_states.size(1), hidden_states.size(1)
        mask = self.joint_mask(plan, text_len, video_len)
        # Stock order [text, video] without a mask (bit-identical to CogVideoX); the mask's
        # order [video, text] otherwise (frames start on tile boundaries).
        if mask is None:
            x = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # (B, S = L + N, D)
            video = slice(text_len, None)
        else:
            x = torch.cat([hidden_states, encoder_hidden_states], dim=1)
            video = slice(0, video_len)
        batch, seq, _ = x.shape

        query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)  # (B, S, H * hd)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, S, hd)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # video tokens only, as in CogVideoXAttnProcessor2_0
            from diffusers.models.embeddings import apply_rotary_emb

            query[:, :, video] = apply_rotary_emb(query[:, :, video], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, video] = apply_rotary_emb(key[:, :, video], image_rotary_emb)

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if mask is None:
            scale = None if beta == 1.0 else beta / math.sqrt(head_dim)  # None: SDPA's own 1/sqrt(hd)
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=scale
            )  # (B, H, S, hd)
        elif attention_mask is not None:
            bias, valid = mask.dense_bias(query.device, query.dtype)
            extra = torch.roll(attention_mask, shifts=(-text_len, -text_len), dims=(-2, -1))  # -> [video, text]
            scale = beta / math.sqrt(head_dim)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias + extra, scale=scale)
            out = out * valid[:, None]  # a query with no allowed key gets 0
        else:
            out = softmax_attention(query, key, value, mask, beta)  # the kernels of CanvasAttention
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)  # (B, S, H * hd)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if mask is None:
            text, video_out = out.split([text_len, video_len], dim=1)
        else:
            video_out, text = out.split([video_len, text_len], dim=1)
        return video_out, text


def _processor_names(model: nn.Module, where: str) -> list[str]:
    names = list(getattr(model, "attn_processors", None) or {})
    if not names or not hasattr(model, "set_attn_processor"):
        msg = (
            f"{where}: {type(model).__name__} has no diffusers attention processors (expected a model with "
            "`attn_processors` and `set_attn_processor`, e.g. CogVideoXTransformer3DModel)"
        )
        raise CanvasValidationError(msg)
    return names


def install_canvas_processor(
    model: nn.Module,
    plan: CanvasSpec = None,
    text_rule: TextRule = "global",
    skip_dense_mask: bool = True,
) -> dict[str, CanvasCogVideoXAttnProcessor]:
    """Install one shared :class:`CanvasCogVideoXAttnProcessor` on every attention layer.

    Uses ``model.set_attn_processor({name: processor for name in model.attn_processors})``;
    one instance serves every layer, so the dense mask is built once.

    Args:
        model: a diffusers model with ``attn_processors`` / ``set_attn_processor``.
        plan: an ``AttentionPlan``, a ``(layout, topology)`` pair, or None (dense).
        text_rule: ``"global"``, ``"condition"`` or ``"isolated"``.
        skip_dense_mask: see :class:`CanvasCogVideoXAttnProcessor`.

    Returns:
        processor name -> the installed processor.

    Raises:
        CanvasValidationError: ``model`` has no diffusers attention processors, or bad arguments.

    """
    names = _processor_names(model, "install_canvas_processor")
    processor = CanvasCogVideoXAttnProcessor(
        _resolve_plan(plan, "install_canvas_processor"), text_rule=text_rule, skip_dense_mask=skip_dense_mask
    )
    processors = {name: processor for name in names}
    model.set_attn_processor(dict(processors))  # set_attn_processor pops from the dict it gets
    return processors


# -- grafting ------------------------------------------------------------------------


def _inner_dim(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    heads, head_dim = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    if isinstance(heads, int) and isinstance(head_dim, int):
        return heads * head_dim
    from canvas_engineering.models.looped import infer_width

    return infer_width(model.transformer_blocks[0])


def wrap_transformer_blocks(model: nn.Module, max_loops: int = 3, checkpoint: bool = False) -> nn.ModuleList:
    """Replace each ``model.transformer_blocks[i]`` by a :class:`LoopedBlockWrapper` (in place).

    Each wrapper has ``loop_embeddings`` for the video stream and ``stream_embeddings`` for
    the text stream, both ``(max_loops, inner_dim)``, zero-initialised, on the block's device.

    Returns:
        ``model.transformer_blocks`` itself, now holding the wrappers.

    Raises:
        CanvasValidationError: no ``transformer_blocks`` (the message names the model type),
            blocks already wrapped, or a block whose ``forward`` does not start with
            ``(hidden_states, encoder_hidden_states, ...)``.

    """
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        msg = (
            f"graft_looped_blocks: found no transformer blocks on {type(model).__name__} (no non-empty "
            "`transformer_blocks` ModuleList); expected diffusers' CogVideoXTransformer3DModel"
        )
        raise CanvasValidationError(msg)
    if any(isinstance(b, LoopedBlockWrapper) for b in blocks):
        msg = f"graft_looped_blocks: {type(model).__name__} is already grafted (its blocks are LoopedBlockWrapper)"
        raise CanvasValidationError(msg)
    for i, block in enumerate(blocks):
        params = list(inspect.signature(block.forward).parameters)
        if params[:2] != ["hidden_states", "encoder_hidden_states"]:
            msg = (
                f"graft_looped_blocks: {type(model).__name__}.transformer_blocks[{i}] is a "
                f"{type(block).__name__} whose forward takes ({', '.join(params)}); expected "
                "CogVideoXBlock's (hidden_states, encoder_hidden_states, ...)"
            )
            raise CanvasValidationError(msg)
    width = _inner_dim(model)
    for i, block in enumerate(blocks):
        wrapper = LoopedBlockWrapper(
            block, max_loops=max_loops, d_model=width, checkpoint=checkpoint, stream_width=width
        )
        device = next(block.parameters()).device
        for name in ("loop_embeddings", "stream_embeddings"):
            param = getattr(wrapper, name)
            if param is not None and param.device != device:  # e.g. a model on "meta" or a GPU
                setattr(wrapper, name, nn.Parameter(param.detach().to(device)))
        blocks[i] = wrapper
    return blocks


class _RefuseDiffusersSave:
    """Stands in for ``save_pretrained`` on a grafted model (an object, so the model still pickles)."""

    def __init__(self, model_class: str) -> None:
        self.model_class = model_class

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        msg = (
            f"save_pretrained: this {self.model_class} is grafted (its blocks are LoopedBlockWrapper); diffusers' "
            "from_pretrained would not read the wrapped blocks back and would initialise them anew. Use "
            "canvas_engineering.save_grafted_transformer(model, folder, action_head=head) and "
            "load_grafted_transformer(folder) instead"
        )
        raise GraftedSaveError(msg)


def graft_looped_blocks(
    model: nn.Module,
    max_loops: int = 3,
    freeze: FreezeStrategy = "full",
    action_dim: int = 7,
    checkpoint: bool = False,
    canvas: CanvasSpec = None,
    text_rule: TextRule = "global",
) -> tuple[nn.ModuleList, ActionHead]:
    """Graft looped blocks (and canvas attention) onto a diffusers CogVideoX transformer.

    Wraps every block of ``model.transformer_blocks`` in a :class:`LoopedBlockWrapper` with
    zero-initialised loop embeddings for the video and text streams (so with one loop the
    model computes exactly what it did), installs :class:`CanvasCogVideoXAttnProcessor` on
    every attention layer (so each loop's ``beta`` reaches the attention, and ``canvas``
    applies), builds an :class:`ActionHead` reading the output latent channels, and applies
    the freeze strategy:

    ======== ============================================= =====================
    freeze   frozen                                        trainable
    ======== ============================================= =====================
    "full"   everything except the loop embeddings         loops + action head
    "half"   only ``patch_embed``                          the rest + action head
    "none"   nothing                                       all + action head
    ======== ============================================= =====================

    The trainable count (model + action head) is logged and stored as
    ``model.canvas_trainable_parameters``; the strategy as ``model.freeze_strategy``.

    Args:
        model: a ``CogVideoXTransformer3DModel`` (any model with CogVideoX-style
            ``transformer_blocks`` and diffusers attention processors).
        max_loops: most loops per block.
        freeze: ``"full"``, ``"half"`` or ``"none"``.
        action_dim: action head output size.
        checkpoint: recompute each loop's activations in backward.
        canvas: an ``AttentionPlan`` or ``(layout, topology)`` over the video tokens, or None
            for dense attention.
        text_rule: how text tokens take part in the plan (``"global"`` is CogVideoX's own).

    Returns:
        ``(looped_blocks, action_head)``: ``model.transformer_blocks`` (now wrappers) and the head.

    Raises:
        CanvasValidationError: no transformer blocks (names the model type), already grafted,
            or a bad argument (names it and the allowed values).

    Example::

        >>> from diffusers import CogVideoXTransformer3DModel  # doctest: +SKIP
        >>> model = CogVideoXTransformer3DModel.from_pretrained(  # doctest: +SKIP
        ...     "THUDM/CogVideoX-2b", subfolder="transformer")
        >>> looped, head = graft_looped_blocks(model, max_loops=3, freeze="full")  # doctest: +SKIP
        >>> model.canvas_trainable_parameters  # doctest: +SKIP
        351751

    """
    check_choice(freeze, "graft_looped_blocks: freeze", FREEZE_STRATEGIES)
    check_positive_int(action_dim, "graft_looped_blocks: action_dim")
    plan = _resolve_plan(canvas, "graft_looped_blocks")
    _check_text_rule(text_rule, "graft_looped_blocks")
    if isinstance(getattr(model, "transformer_blocks", None), nn.ModuleList):
        _processor_names(model, "graft_looped_blocks")  # fail before changing the model
    looped = wrap_transformer_blocks(model, max_loops=max_loops, checkpoint=checkpoint)
    install_canvas_processor(model, plan, text_rule=text_rule)
    config = getattr(model, "config", None)
    latent_dim = getattr(config, "out_channels", None) or getattr(config, "in_channels", None) or _inner_dim(model)
    device = next(model.parameters()).device
    action_head = ActionHead(latent_dim=int(latent_dim), action_dim=action_dim).to(device)
    model_trainable = _FREEZERS[freeze](model)
    head_params = count_trainable(action_head)
    total = model_trainable + head_params
    model.freeze_strategy = freeze
    model.canvas_trainable_parameters = total
    if hasattr(model, "save_pretrained"):  # diffusers' would write keys its from_pretrained cannot read
        model.save_pretrained = _RefuseDiffusersSave(type(model).__name__)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info(
        "graft_looped_blocks: %d %s blocks x %d loops, freeze=%r: %s trainable parameters "
        "(%s in the model of %s, %s in the action head)",
        len(looped),
        type(looped[0].block).__name__,
        max_loops,
        freeze,
        f"{total:,}",
        f"{model_trainable:,}",
        f"{n_all:,}",
        f"{head_params:,}",
    )
    return looped, action_head
