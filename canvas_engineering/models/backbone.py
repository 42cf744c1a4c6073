"""``CanvasBackbone``: what every backbone over canvas tokens offers the training layer.

A backbone maps canvas tokens and a diffusion timestep to canvas tokens. Whatever it is made
of (a from-scratch :class:`~canvas_engineering.models.dit.CanvasDiT` or a grafted pretrained model),
its looped blocks are :class:`~canvas_engineering.models.looped.LoopedBlockWrapper` modules, and the
curriculum and sharpening callbacks drive them through this one interface:
:attr:`looped_blocks`, :attr:`max_loops`, :meth:`set_loops` and :meth:`set_betas`.

Registering a backbone: ``registry.add(name, factory)`` in a ``register_backbones`` hook, where
``factory(layout, topology, **config)`` returns the module. This module installs the registry's
check for the kind (``"backbone"``): a class must be a concrete :class:`CanvasBackbone`
subclass; any other object must be callable and not a built module (register its class or a
factory). Anything else is refused when it is added.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.looped import LoopedBlockWrapper
from canvas_engineering.plugin_host.registry import class_rule, describe_object, set_kind_check
from canvas_engineering.validation import check_int, positive_finite_numbers

__all__ = ["CanvasBackbone"]


class CanvasBackbone(nn.Module, ABC):
    """Base class of backbones: ``forward(tokens, timestep) -> tokens`` plus loop control.

    Subclasses build their blocks (wrapping the looped ones in
    :class:`~canvas_engineering.models.looped.LoopedBlockWrapper`) and implement :meth:`forward`.
    Looped blocks are found wherever they sit in the module tree, in module order, so a
    subclass needs no bookkeeping of its own.
    """

    @property
    def looped_blocks(self) -> list[LoopedBlockWrapper]:
        """Every :class:`LoopedBlockWrapper` of the backbone, in module order."""
        return [m for m in self.modules() if isinstance(m, LoopedBlockWrapper)]

    @property
    def max_loops(self) -> int:
        """The largest ``max_loops`` of the looped blocks (1 when nothing is looped)."""
        return max((b.max_loops for b in self.looped_blocks), default=1)

    @property
    def current_loops(self) -> int:
        """Active loops (the largest of the looped blocks; 1 when nothing is looped)."""
        return max((b.current_loops for b in self.looped_blocks), default=1)

    def set_loops(self, n: int) -> None:
        """Run every looped block ``n`` times per forward (blocks with fewer loops run all theirs).

        Raises:
            CanvasValidationError: ``n`` is not an integer in ``[1, max_loops]``.

        """
        check_int(
            n,
            f"{type(self).__name__}.set_loops: n",
            minimum=1,
            maximum=self.max_loops,
            rule=f"an integer in [1, max_loops={self.max_loops}]",
        )
        for block in self.looped_blocks:
            block.set_loops(min(n, block.max_loops))

    def set_betas(self, betas: Sequence[float]) -> None:
        """Set the per-loop sharpening factors of every looped block.

        Args:
            betas: ``max_loops`` finite positive numbers; ``betas[i]`` multiplies the attention logits
                of loop ``i`` (a block with fewer loops takes the first ones).

        Raises:
            CanvasValidationError: wrong length, or a beta that is not a finite number > 0.

        """
        values = positive_finite_numbers(betas, self.max_loops)
        if values is None:
            msg = (
                f"{type(self).__name__}.set_betas: betas={betas!r} must be {self.max_loops} positive "
                f"number(s), one per loop (max_loops={self.max_loops})"
            )
            raise CanvasValidationError(msg)
        for block in self.looped_blocks:
            block.set_betas(values[: block.max_loops])

    def loop_parameters(self) -> list[nn.Parameter]:
        """Return the loop-specific parameters (loop embeddings) of every looped block."""
        return [p for block in self.looped_blocks for p in block.loop_parameters()]

    @abstractmethod
    def forward(self, tokens: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Map canvas tokens ``(B, N, d_model)`` at diffusion ``timestep`` ``(B,)`` to ``(B, N, d_model)``."""


def _backbone_rule(obj: object) -> str | None:
    """Registry check of the ``"backbone"`` kind: a concrete ``CanvasBackbone`` class or a factory function."""
    if isinstance(obj, type):
        return class_rule(obj, CanvasBackbone, "canvas_engineering.CanvasBackbone", "cls(layout, topology, **config)")
    wanted = "must be a factory(layout, topology, **config) returning an nn.Module, or a CanvasBackbone subclass"
    if isinstance(obj, nn.Module):
        return f"{wanted}; got {describe_object(obj)}, an already built module (register its class or a factory)"
    if not callable(obj):
        return f"{wanted}; got {describe_object(obj)}, which is not callable"
    return None


set_kind_check("backbone", _backbone_rule)
