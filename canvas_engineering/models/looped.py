"""``LoopedBlockWrapper``: iterate any transformer block with zero-initialised loop embeddings."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.validation import check_int, check_positive_int, positive_finite_numbers

__all__ = ["LoopedBlockWrapper", "infer_width"]


def infer_width(block: nn.Module) -> int:
    """Token width of a block: its first LayerNorm's size, else its first Linear's input size."""
    for module in block.modules():
        if isinstance(module, nn.LayerNorm) and module.normalized_shape:
            return int(module.normalized_shape[-1])
    for module in block.modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    msg = f"cannot infer the token width of {type(block).__name__}; pass d_model="
    raise CanvasValidationError(msg)


class LoopedBlockWrapper(nn.Module):
    """Run ``block`` up to ``max_loops`` times, adding a learned loop embedding before each pass.

    Loop ``i`` adds ``loop_embeddings[i]`` to the block's first input (the hidden states) and,
    when the block returns a tuple of ``m`` tensors, those replace the block's first ``m``
    parameters for the next pass (so a CogVideoX block's ``(hidden_states,
    encoder_hidden_states)`` both flow through the loop; the second stream gets its own
    ``stream_embeddings``). Embeddings start at zero, so with one active loop the output
    equals the wrapped block's output exactly.

    The sharpening factor of loop ``i`` (``betas[i]``) reaches the attention as a ``beta=``
    keyword when the block's ``forward`` accepts one, or inside ``attention_kwargs`` when it
    accepts that (diffusers blocks); otherwise betas are not used.

    Args:
        block: any ``nn.Module`` block.
        max_loops: most passes (>= 1).
        d_model: hidden width (inferred from the block when omitted).
        checkpoint: recompute each loop's activations in backward (per loop, not per block).
        stream_width: width of a second stream (e.g. text tokens) that also gets loop
            embeddings; ``None`` for none.

    Attributes:
        current_loops: passes run per forward (1 at construction; see :meth:`set_loops`).
        betas: per-loop sharpening factors (1.0 at construction; see :meth:`set_betas`).

    """

    def __init__(
        self,
        block: nn.Module,
        max_loops: int = 3,
        d_model: int | None = None,
        checkpoint: bool = False,
        stream_width: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(max_loops, "LoopedBlockWrapper: max_loops")
        self.block = block
        self.max_loops = max_loops
        width = d_model if d_model is not None else infer_width(block)
        self.loop_embeddings = nn.Parameter(torch.zeros(max_loops, width))
        self.stream_embeddings = nn.Parameter(torch.zeros(max_loops, stream_width)) if stream_width else None
        self.checkpoint = checkpoint
        self.current_loops = 1
        self.betas: list[float] = [1.0] * max_loops
        self._signature = inspect.signature(block.forward)
        params = self._signature.parameters
        self._beta_mode = "beta" if "beta" in params else ("attention_kwargs" if "attention_kwargs" in params else None)

    def set_loops(self, n: int) -> None:
        """Set the number of active loops (1 <= n <= max_loops)."""
        self.current_loops = check_int(
            n,
            "LoopedBlockWrapper.set_loops: n",
            minimum=1,
            maximum=self.max_loops,
            rule=f"an integer in [1, max_loops={self.max_loops}]",
        )

    def set_betas(self, betas: Sequence[float]) -> None:
        """Set the per-loop sharpening factors (``max_loops`` finite positive numbers).

        Every way betas reach a looped block goes through here (the ``AttentionSharpening``
        callback and ``set_betas`` of the backbones call it), so NaN, inf, 0, negatives and
        bools are refused before any forward; NumPy scalars and one-element tensors are
        accepted and stored as floats. Nothing changes when the call is refused.

        Raises:
            CanvasValidationError: wrong length, or a beta that is not a finite number > 0.

        """
        values = positive_finite_numbers(betas, self.max_loops)
        if values is None:
            msg = (
                f"LoopedBlockWrapper.set_betas: need {self.max_loops} positive betas (finite numbers > 0; "
                f"NaN, inf, 0 and bools are refused), got {betas!r}"
            )
            raise CanvasValidationError(msg)
        self.betas = values

    def get_extra_state(self) -> torch.Tensor:
        """Return ``[current_loops, *betas]`` as float64 (exact), so a plain ``state_dict`` keeps them.

        A tensor rather than a dict, so safetensors files hold it like any weight.
        """
        return torch.tensor([float(self.current_loops), *self.betas], dtype=torch.float64)

    def set_extra_state(self, state: Any) -> None:
        """Restore the loops and betas from :meth:`get_extra_state`'s tensor (checked like the setters)."""
        values = torch.as_tensor(state).detach().to("cpu", torch.float64).reshape(-1).tolist()
        if len(values) != self.max_loops + 1 or not float(values[0]).is_integer():
            msg = (
                f"LoopedBlockWrapper: the saved loop state must be [current_loops, {self.max_loops} betas] "
                f"with an integer loop count, got {values!r}"
            )
            raise CanvasValidationError(msg)
        betas = values[1:]
        self.set_loops(int(values[0]))
        self.set_betas(betas)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # files written before the loop state was saved keep loading (their loops/betas come from elsewhere)
        key = prefix + "_extra_state"
        if key not in state_dict and key in missing_keys:
            missing_keys.remove(key)

    def loop_parameters(self) -> list[nn.Parameter]:
        """Return the loop-specific parameters (embeddings), without the block's."""
        return [p for p in (self.loop_embeddings, self.stream_embeddings) if p is not None]

    def _pass(self, i: int, arguments: dict[str, Any]) -> Any:
        names = list(self._signature.parameters)
        args = dict(arguments)
        args[names[0]] = args[names[0]] + self.loop_embeddings[i].to(args[names[0]].dtype)
        if self.stream_embeddings is not None and len(names) > 1 and torch.is_tensor(args.get(names[1])):
            args[names[1]] = args[names[1]] + self.stream_embeddings[i].to(args[names[1]].dtype)
        if self._beta_mode == "beta":
            args["beta"] = self.betas[i]
        elif self._beta_mode == "attention_kwargs":
            args["attention_kwargs"] = {**(args.get("attention_kwargs") or {}), "beta": self.betas[i]}
        call = inspect.BoundArguments(self._signature, args)  # handles *args/**kwargs parameters
        return self.block(*call.args, **call.kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the block ``current_loops`` times (same arguments as the block)."""
        bound = self._signature.bind(*args, **kwargs)
        arguments = dict(bound.arguments)
        names = list(self._signature.parameters)
        out = None
        for i in range(self.current_loops):
            if self.checkpoint and self.training and torch.is_grad_enabled():
                # a copy: ``arguments`` is updated below, and the recompute in backward must see
                # this loop's inputs, not the final ones
                out = activation_checkpoint(self._pass, i, dict(arguments), use_reentrant=False)
            else:
                out = self._pass(i, arguments)
            if isinstance(out, tuple):
                for name, value in zip(names, out, strict=False):  # a block may return fewer streams
                    arguments[name] = value
            else:
                arguments[names[0]] = out
        return out

    def extra_repr(self) -> str:
        """Loops and checkpointing, for ``print(model)``."""
        return f"max_loops={self.max_loops}, current_loops={self.current_loops}, checkpoint={self.checkpoint}"
