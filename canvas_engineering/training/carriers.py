"""Carriers: how a region's predicted frames are produced, one small object per carrier name.

:func:`carrier_for` turns a program's carrier name into its object once, when a
:class:`~canvas_engineering.CanvasModule` is built; the module then asks the object
(``is_noised``, ``predicts_inputs``, ``compose``, ...) instead of comparing names.

=============  ==========  ===============  =============  ===================================
carrier        is_noised   predicts_inputs  adds_previous  carries_memory
=============  ==========  ===============  =============  ===================================
diffusive      yes         no               no             no
filter         yes         yes              no             no
deterministic  no (zeros)  no               no             no
memory         no (zeros)  no               no             yes (``memory_out``)
residual       yes         no               yes            no
=============  ==========  ===============  =============  ===================================
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

import torch

from canvas_engineering.errors import ProgramValidationError

__all__ = [
    "CARRIER_TYPES",
    "Carrier",
    "DeterministicCarrier",
    "DiffusiveCarrier",
    "FilterCarrier",
    "MemoryCarrier",
    "ResidualCarrier",
    "carrier_for",
]


class Carrier:
    """How a region's predicted frames are produced (the base is the plain diffusive behaviour)."""

    #: the program's name for this carrier
    name: ClassVar[str] = "diffusive"
    #: predicted positions start from noise (``False``: from zeros, regressed from the clean context)
    is_noised: ClassVar[bool] = True
    #: future frames are predicted even when the layout marks the region as an input
    predicts_inputs: ClassVar[bool] = False
    #: the prediction at frame ``k`` adds the value at frame ``k - 1`` (see :meth:`compose`)
    adds_previous: ClassVar[bool] = False
    #: ``predict_step`` returns the region's last frame under ``memory_out``
    carries_memory: ClassVar[bool] = False

    def compose(self, decoded: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """Return the region's value at one frame from the decoder output there.

        Args:
            decoded: ``(B, ...)`` decoder output at the frame.
            previous: ``(B, ...)`` value at the frame before (``None`` at frame 0).

        Returns:
            ``decoded`` (a residual carrier adds ``previous``).

        """
        return decoded

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DiffusiveCarrier(Carrier):
    """Output regions' future frames are noised and denoised (the default)."""


class FilterCarrier(Carrier):
    """Future frames are noised and denoised even for an input region; past frames are given."""

    name = "filter"
    predicts_inputs = True


class DeterministicCarrier(Carrier):
    """Predicted positions hold zeros, not noise: regression from the clean context."""

    name = "deterministic"
    is_noised = False


class MemoryCarrier(DeterministicCarrier):
    """Like deterministic; ``predict_step`` also returns the last frame as ``memory_out``."""

    name = "memory"
    carries_memory = True


class ResidualCarrier(Carrier):
    """Noised like diffusive; the prediction is the decoder output plus the previous frame's value."""

    name = "residual"
    adds_previous = True

    def compose(self, decoded: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        return decoded if previous is None else decoded + previous


#: Carrier name -> its class.
CARRIER_TYPES: MappingProxyType[str, type[Carrier]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (DeterministicCarrier, DiffusiveCarrier, FilterCarrier, MemoryCarrier, ResidualCarrier)
    }
)


def carrier_for(name: str) -> Carrier:
    """Return the carrier object for a program's carrier ``name``.

    Raises:
        ProgramValidationError: an unknown name (the message lists the known ones).

    """
    if name not in CARRIER_TYPES:
        msg = f"unknown carrier {name!r}; choose one of {', '.join(CARRIER_TYPES)}"
        raise ProgramValidationError(msg)
    return CARRIER_TYPES[name]()
