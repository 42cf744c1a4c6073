"""The training layer's parts, used by :class:`~canvas_engineering.CanvasModule`.

``CanvasModule`` holds the Lightning hooks; everything that varies per region is a small
object chosen once, when the module is built, from its :class:`~canvas_engineering.CanvasProgram`
(without ``program=``, the default program ``CanvasProgram(schema)``: every region diffusive,
updating at every frame, ``runtime``, loss weight from the layout, which is exactly the plain
schema semantics). "Predicted" positions are those a region's carrier predicts:

* **carrier** (:mod:`.carriers`): ``diffusive``: output regions' future frames are noised.
  ``filter``: future frames are noised and predicted even for an input region; past frames
  are always given. ``deterministic``/``memory``: predicted positions hold zeros instead of
  noise (regression from the clean context; at sampling they stay zero and the last step's
  prediction is returned). ``residual``: noised like ``diffusive``; the prediction at frame
  ``k`` is the decoder output plus the value at frame ``k - 1`` (the data at a context frame,
  the region's own prediction at a predicted frame; nothing at frame 0). ``memory``:
  ``predict_step`` also returns ``{"memory_out": {region: last frame}}`` for the caller to
  feed the next window.
* **clock** (:mod:`.clocks`): at predicted frames where the region's clock does not fire
  (:meth:`CanvasProgram.update_mask`), its prediction is *held* from its previous frame (the
  data at a context frame; the batch's own first frame if frame 0 does not fire) and the
  position takes no loss. Noising is unchanged.
* **compile mode** (:mod:`.compile_modes`): ``freeze``: the region's encoder and decoder get
  ``requires_grad=False`` (AdamW never sees them) and its encoded tokens are detached; the
  backbone still learns to predict it. ``constant``: no codec; its tokens are the fixed
  ``constant_value`` buffer; never noised, decoded or lossed; connections whose query region
  it is are dropped (:meth:`CanvasProgram.execution_topology`), so its positions never run as
  attention queries; a batch may omit it. ``export``: ``predict_step`` returns it even if it
  is an input.
* **family**: the default carrier, and the loss weight ``family scale x layout weight``
  unless ``RegionProgram.loss_weight`` is given (:meth:`CanvasProgram.loss_weight`).
* **operator / write mode** (:mod:`.write_modes`): the backbone runs
  :meth:`CanvasProgram.execution_topology` (operators as ``fn``); write modes other than
  ``add`` are passed to the backbone as ``write_modes`` (``canvas_dit`` accepts them).

``predict_step`` returns, with a program, every region with predicted frames plus every
``export`` region (and ``memory_out``); without one, every region a batch feeds.

The other parts: :mod:`.region_behaviour` (the per-region objects together),
:mod:`.masks` (predicted / noised / emptied positions and loss weights),
:mod:`.frame_rules` (residual carriers and clock holds), :mod:`.losses`, :mod:`.sampling`,
:mod:`.metrics`, :mod:`.lr` (AdamW and ``WarmupCosine``), :mod:`.arguments` (schema, program
and hyper-parameter checks), :mod:`.batches` and :mod:`.canvas_records` (what checkpoints
record about the canvas).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from canvas_engineering.training.carriers import (
    Carrier,
    DeterministicCarrier,
    DiffusiveCarrier,
    FilterCarrier,
    MemoryCarrier,
    ResidualCarrier,
    carrier_for,
)
from canvas_engineering.training.clocks import EveryFrameClock, ProgramClock, RegionClock, region_clock
from canvas_engineering.training.compile_modes import (
    CompileMode,
    ConstantMode,
    ExportMode,
    FreezeMode,
    RuntimeMode,
    compile_mode_for,
)
from canvas_engineering.training.lr import WarmupCosine
from canvas_engineering.training.region_behaviour import RegionBehaviour, region_behaviours
from canvas_engineering.training.write_modes import AddWrite, GateWrite, ReplaceWrite, WriteMode, write_mode_for

__all__ = [
    "AddWrite",
    "Carrier",
    "CompileMode",
    "ConstantMode",
    "DeterministicCarrier",
    "DiffusiveCarrier",
    "EveryFrameClock",
    "ExportMode",
    "FilterCarrier",
    "FreezeMode",
    "GateWrite",
    "MemoryCarrier",
    "ProgramClock",
    "RegionBehaviour",
    "RegionClock",
    "ReplaceWrite",
    "ResidualCarrier",
    "RuntimeMode",
    "WarmupCosine",
    "WriteMode",
    "carrier_for",
    "compile_mode_for",
    "region_behaviours",
    "region_clock",
    "write_mode_for",
]
