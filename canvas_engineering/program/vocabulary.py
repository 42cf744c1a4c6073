"""The words of a program: families, carriers, compile modes and write modes, with their defaults.

Each is a closed set of names (a ``Literal``, so LightningCLI and jsonargparse can check
it) and a table saying what each name means. What a name *does* at run time lives with
the training layer (:mod:`canvas_engineering.training`), which turns each name into an
object once, when a model is built.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Literal, NamedTuple, get_args

__all__ = [
    "CARRIERS",
    "COMPILE_MODES",
    "FAMILIES",
    "WRITE_MODES",
    "CarrierName",
    "CompileModeName",
    "FamilyDefaults",
    "FamilyName",
    "WriteModeName",
]

#: What kind of quantity a region holds.
FamilyName = Literal["observation", "state", "memory", "residual", "action"]
#: How a region is predicted.
CarrierName = Literal["deterministic", "diffusive", "filter", "memory", "residual"]
#: Whether a region learns, is folded out, or is returned.
CompileModeName = Literal["runtime", "freeze", "constant", "export"]
#: How a connection's output is combined with the other connections'.
WriteModeName = Literal["add", "replace", "gate"]

#: Carrier -> how ``CanvasModule`` predicts the region ("future" = real frame >= t_current).
CARRIERS: MappingProxyType[str, str] = MappingProxyType(
    {
        "deterministic": "future output frames hold zeros (not noise) and are regressed from the clean context",
        "diffusive": "future output frames are noised and denoised (the layout decides which frames are outputs)",
        "filter": "future frames are noised and denoised even for an input region; past frames are always given",
        "memory": "like deterministic; predict_step also returns the last frame as memory_out for the next window",
        "residual": "noised like diffusive; the prediction is the decoder output plus the previous frame's value",
    }
)

#: The compile modes.
COMPILE_MODES: tuple[str, ...] = get_args(CompileModeName)

#: The write modes of a connection (``CanvasAttention`` combines group outputs by them).
WRITE_MODES: tuple[str, ...] = get_args(WriteModeName)


class FamilyDefaults(NamedTuple):
    """What a family implies: default carrier, loss scale and the families it reads."""

    #: carrier used when a ``RegionProgram`` names none
    carrier: str
    #: multiplies the layout's loss weight when a ``RegionProgram`` names no ``loss_weight``
    loss_scale: float
    #: families whose regions it reads at the same frame in :meth:`CanvasProgram.from_families`
    reads: tuple[str, ...]


#: Family -> its defaults (the table in the :mod:`canvas_engineering.program` docstring).
FAMILIES: MappingProxyType[str, FamilyDefaults] = MappingProxyType(
    {
        "observation": FamilyDefaults("filter", 1.0, ()),
        "state": FamilyDefaults("diffusive", 1.0, ("observation",)),
        "memory": FamilyDefaults("memory", 1.0, ("state",)),
        "action": FamilyDefaults("diffusive", 2.0, ("state", "observation")),
        "residual": FamilyDefaults("residual", 0.5, ("observation", "state", "memory", "action", "residual")),
    }
)
