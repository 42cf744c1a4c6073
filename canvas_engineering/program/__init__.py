"""``CanvasProgram``: what each region *is* and how it runs, on top of a ``CanvasSchema``.

The schema says where regions live and who attends to whom. A program adds, per region, a
*family* (what kind of quantity it holds), a *carrier* (how it is predicted), a *clock* (at
which frames it updates) and a *compile mode* (whether it learns, is folded out, or is
returned), and per connection an *operator* (the attention type that runs it) and a *write
mode* (how its output is combined with the other connections'). Every field has a run-time
effect when a :class:`~canvas_engineering.CanvasModule` is built with ``program=``:

=================  ========================================================================
property           effect in ``CanvasModule``
=================  ========================================================================
family             default carrier and loss scale (:data:`FAMILIES`); default wiring in
                   :meth:`CanvasProgram.from_families`
carrier            which positions are predicted and how (see :data:`CARRIERS`)
clock              which predicted frames update; elsewhere the value is held, no loss
compile_mode       ``freeze``: codec frozen, tokens detached; ``constant``: a fixed buffer,
                   never a query, never predicted; ``export``: returned by ``predict_step``
operator           the attention type of the connection (replaces its ``fn``)
write_mode         ``add`` (sum), ``gate`` (learned sigmoid gate), ``replace`` (overwrite)
=================  ========================================================================

Family defaults (:data:`FAMILIES`; wiring used by :meth:`CanvasProgram.from_families`):

===========  =============  ==========  ===================================================
family       carrier        loss scale  reads (besides itself at its frame and the previous)
===========  =============  ==========  ===================================================
observation  filter         1.0         nothing else
state        diffusive      1.0         observation
memory       memory         1.0         state
action       diffusive      2.0         state, observation
residual     residual       0.5         every other region
===========  =============  ==========  ===================================================

A region's loss weight is ``RegionProgram.loss_weight`` when given, else the family's loss
scale times the layout's ``RegionSpec.loss_weight``. A region the program does not list is
``RegionProgram()``: family ``state``, carrier ``diffusive``, every frame, ``runtime``, so an
empty program runs exactly like no program (apart from what ``predict_step`` returns).

Example::

    >>> from canvas_engineering import CanvasLayout
    >>> layout = CanvasLayout(T=4, H=2, W=2, d_model=8, t_current=2,
    ...     regions={"obs": (0, 4, 0, 1, 0, 2), "act": (0, 4, 1, 2, 0, 2)})
    >>> program = CanvasProgram.from_families(layout, {"obs": "observation", "act": "action"})
    >>> program.regions["act"].carrier, program.loss_weight("act")
    ('diffusive', 2.0)
    >>> CanvasProgram.from_json(program.to_json()) == program
    True

.. versionadded:: 0.1.0
.. versionchanged:: 0.2.0
   A package (was one module); every name imports as before.


The package is split by concept: :mod:`~canvas_engineering.program.vocabulary` (families,
carriers, compile and write modes), :mod:`~canvas_engineering.program.clocks`,
:mod:`~canvas_engineering.program.region_program` and
:mod:`~canvas_engineering.program.connection_program`,
:mod:`~canvas_engineering.program.wiring` (family wiring, cycles),
:mod:`~canvas_engineering.program.serialisation` (JSON) and
:mod:`~canvas_engineering.program.canvas_program` (the program itself). Every public name is
importable from ``canvas_engineering.program``.
"""

from __future__ import annotations

from canvas_engineering.errors import ProgramCycleError, ProgramValidationError
from canvas_engineering.program.canvas_program import CanvasProgram
from canvas_engineering.program.clocks import Boundary, Clock, ClockKind
from canvas_engineering.program.connection_program import ConnectionProgram
from canvas_engineering.program.region_program import RegionProgram
from canvas_engineering.program.serialisation import PROGRAM_FORMAT_VERSION
from canvas_engineering.program.vocabulary import (
    CARRIERS,
    COMPILE_MODES,
    FAMILIES,
    WRITE_MODES,
    CarrierName,
    CompileModeName,
    FamilyDefaults,
    FamilyName,
    WriteModeName,
)

# The names these Literal types had when the program was one module.
Family = FamilyName
Carrier = CarrierName
CompileMode = CompileModeName
WriteMode = WriteModeName

__all__ = [
    "CARRIERS",
    "COMPILE_MODES",
    "FAMILIES",
    "PROGRAM_FORMAT_VERSION",
    "WRITE_MODES",
    "Boundary",
    "CanvasProgram",
    "CarrierName",
    "Clock",
    "ClockKind",
    "CompileModeName",
    "ConnectionProgram",
    "FamilyDefaults",
    "FamilyName",
    "ProgramCycleError",
    "ProgramValidationError",
    "RegionProgram",
    "WriteModeName",
]
