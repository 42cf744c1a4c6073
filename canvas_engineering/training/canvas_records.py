"""What a checkpoint records about the canvas beside the weights, and the checks on loading it.

A checkpoint holds ``canvas_schema`` (the schema dict), ``canvas_program`` (the program dict,
only when the model was given a program), and ``canvas_loops`` (active loops and betas of
the looped blocks), so a loaded model is refused when its canvas differs and runs with the
loops it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.training.arguments import schema_difference

__all__ = ["check_canvas_records", "loop_record", "write_canvas_records"]


def write_canvas_records(
    checkpoint: dict[str, Any], schema: Mapping[str, Any], program: Mapping[str, Any] | None, blocks: list[Any]
) -> None:
    """Record the canvas in ``checkpoint`` (see the module docstring).

    Args:
        checkpoint: Lightning's checkpoint dict, written in place.
        schema: the schema dict.
        program: the given program's dict (``None``: the model was given none).
        blocks: the backbone's looped blocks (may be empty).

    """
    checkpoint["canvas_schema"] = dict(schema)
    if program is not None:
        checkpoint["canvas_program"] = dict(program)
    if blocks:  # so a loaded model runs with the loops and betas it was trained with
        checkpoint["canvas_loops"] = {"current_loops": blocks[0].current_loops, "betas": list(blocks[0].betas)}


def check_canvas_records(
    checkpoint: Mapping[str, Any], schema: Mapping[str, Any], program: Mapping[str, Any] | None
) -> None:
    """Refuse a checkpoint trained with a different layout, topology or program.

    Args:
        checkpoint: Lightning's checkpoint dict.
        schema: this model's schema dict.
        program: this model's given program dict (``None``: none was given).

    Raises:
        CanvasValidationError: naming the first difference (checkpoint vs this model).

    """
    saved = checkpoint.get("canvas_schema")
    if saved is not None:
        for part in ("layout", "topology"):
            diff = schema_difference(saved.get(part, {}), schema[part], part)
            if diff:
                msg = f"checkpoint was trained with a different canvas: {diff} (checkpoint vs this model)"
                raise CanvasValidationError(msg)
    saved_program = checkpoint.get("canvas_program")
    if (saved_program is None) != (program is None):
        msg = (
            f"checkpoint was trained {'with' if saved_program is not None else 'without'} a CanvasProgram "
            f"and this model has {'one' if program is not None else 'none'}; pass program= to match"
        )
        raise CanvasValidationError(msg)
    if saved_program is not None:
        for part in ("regions", "connections", "acyclic"):
            diff = schema_difference({part: saved_program.get(part)}, {part: program[part]})
            if diff:
                msg = f"checkpoint was trained with a different program: {diff} (checkpoint vs this model)"
                raise CanvasValidationError(msg)


def loop_record(checkpoint: Mapping[str, Any], max_loops: int) -> tuple[int, list[float]] | None:
    """Return the recorded ``(active loops, betas)``, or ``None`` when the checkpoint has none."""
    loops = checkpoint.get("canvas_loops")
    if not loops:
        return None
    return int(loops.get("current_loops", 1)), list(loops.get("betas", [1.0] * max_loops))
