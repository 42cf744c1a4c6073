"""``CanvasModule``'s arguments: the schema and program it is given, and its hyper-parameter ranges."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.region_codecs import RegionFormat
from canvas_engineering.program import CanvasProgram
from canvas_engineering.training.region_behaviour import RegionBehaviour
from canvas_engineering.validation import check_bool, check_choice, check_finite_float, check_int

__all__ = [
    "as_schema",
    "check_fed_regions",
    "check_hyperparameters",
    "module_key",
    "record_canvas_hyperparameters",
    "resolve_schema_and_program",
    "schema_difference",
]


def module_key(region: str) -> str:
    """Return a ModuleDict-safe key for a region name (typed regions are dotted paths like ``arm.joints``)."""
    return region.replace(".", "__")


def as_schema(schema: CanvasSchema | Mapping[str, Any] | str) -> CanvasSchema:
    """Build a schema from itself, a ``BoundSchema``, its dict, a preset name or a JSON file path.

    Raises:
        CanvasValidationError: any other type (named).

    """
    if isinstance(schema, CanvasSchema):
        return schema
    if isinstance(getattr(schema, "schema", None), CanvasSchema):  # a BoundSchema from compile_schema
        return schema.schema
    if isinstance(schema, Mapping):
        return CanvasSchema.from_dict(dict(schema))
    if isinstance(schema, str):
        from canvas_engineering.typed.presets import PRESETS  # presets build schemas: only needed for a name

        if schema in PRESETS:
            return PRESETS[schema]()
        return CanvasSchema.from_json(schema)
    msg = (
        "CanvasModule.schema must be a CanvasSchema, a schema dict, a preset name or a JSON file path, "
        f"got {type(schema).__name__}"
    )
    raise CanvasValidationError(msg)


def resolve_schema_and_program(
    schema: CanvasSchema | Mapping[str, Any] | str | None, program: CanvasProgram | Mapping[str, Any] | str | None
) -> tuple[CanvasSchema, CanvasProgram | None]:
    """Return the model's schema and the program it was given (``None``: none was given).

    The program's schema wins; a schema given beside it must agree.

    Raises:
        CanvasValidationError: neither is given, or they disagree (naming the first difference).

    """
    if program is None:
        if schema is None:
            msg = "CanvasModule needs a schema (or a program, whose schema it uses)"
            raise CanvasValidationError(msg)
        return as_schema(schema), None
    program = CanvasProgram.coerce(program)
    if schema is not None:
        diff = schema_difference(as_schema(schema).to_dict(), program.schema.to_dict())
        if diff:
            msg = f"CanvasModule: schema and program.schema differ at {diff} (schema vs program); pass only the program"
            raise CanvasValidationError(msg)
    return program.schema, program


def schema_difference(a: Mapping[str, Any], b: Mapping[str, Any], path: str = "") -> str | None:
    """Return the first difference between two schema dicts, as ``"key: a vs b"`` (``None`` if equal)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return f"{where}: {'absent' if key not in a else a[key]!r} vs {'absent' if key not in b else b[key]!r}"
            diff = schema_difference(a[key], b[key], where)
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = schema_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def check_hyperparameters(hparams: Mapping[str, Any]) -> None:
    """Check the numeric and choice hyper-parameters of ``CanvasModule`` (its saved ``hparams``).

    Bools are refused where a number is expected (``max_loops=True`` is a mix-up, not one loop).

    Raises:
        CanvasValidationError: ``CanvasModule.{name}={value!r} must be ...`` for the first bad one.

    """

    def field(name: str) -> str:
        return f"CanvasModule.{name}"

    check_int(hparams["max_loops"], field("max_loops"), minimum=1)
    steps = check_int(hparams["num_train_timesteps"], field("num_train_timesteps"), minimum=2)
    up_to_steps = f"an integer in [1, num_train_timesteps={steps}]"
    check_int(hparams["num_inference_steps"], field("num_inference_steps"), minimum=1, maximum=steps, rule=up_to_steps)
    check_finite_float(hparams["lr"], field("lr"), minimum=0, open_min=True)
    check_int(hparams["warmup_steps"], field("warmup_steps"), minimum=0)
    check_choice(hparams["lr_decay"], field("lr_decay"), ("none", "cosine"))
    check_bool(hparams["sample_metrics"], field("sample_metrics"))
    check_int(hparams["sample_metric_batches"], field("sample_metric_batches"), minimum=0)
    horizon = hparams.get("horizon_weights")
    if horizon is not None:
        if isinstance(horizon, str | bytes) or not isinstance(horizon, Sequence) or not horizon:
            raise CanvasValidationError(
                f"{field('horizon_weights')}={horizon!r} must be a non-empty list of finite numbers >= 0"
            )
        for k, value in enumerate(horizon):
            check_finite_float(value, f"{field('horizon_weights')}[{k}]", minimum=0, maximum=1e6)
        if not any(float(v) > 0 for v in horizon):
            raise CanvasValidationError(f"{field('horizon_weights')}={list(horizon)!r} needs a positive entry")
    if hparams["sample_metric_steps"] is not None:
        check_int(
            hparams["sample_metric_steps"], field("sample_metric_steps"), minimum=1, maximum=steps, rule=up_to_steps
        )


def record_canvas_hyperparameters(
    hparams: MutableMapping[str, Any],
    schema: CanvasSchema,
    formats: Mapping[str, RegionFormat],
    program: CanvasProgram | None,
) -> None:
    """Store the schema, the region formats and the given program in ``hparams`` as JSON-ready dicts.

    ``program`` is ``None`` when none was given (the model runs the default program): checkpoints
    then carry ``program: None`` and load exactly as checkpoints of models without programs.
    """
    hparams["schema"] = schema.to_dict()
    hparams["region_formats"] = {k: f.to_dict() for k, f in formats.items()}
    hparams["program"] = program.to_dict() if program is not None else None


def check_fed_regions(
    regions: Mapping[str, RegionBehaviour], formats: Mapping[str, RegionFormat], region_names: list[str]
) -> None:
    """Check what the batch feeds against the regions' behaviours.

    Raises:
        CanvasValidationError: the batch feeds nothing; an on-event clock watches a region the
            batch does not feed; a region named ``memory_out`` beside a memory carrier (it would
            clash with ``predict_step``'s ``memory_out`` entry).

    """
    if not formats:
        msg = "CanvasModule.region_formats is empty: say which tensor feeds which region"
        raise CanvasValidationError(msg)
    for name in formats:
        source = regions[name].watches
        if source is not None and source not in formats:
            msg = (
                f"region {name!r}: its on_event clock watches region {source!r}, which the batch does not feed "
                f"(no region format, or constant); fed regions: {', '.join(formats)}"
            )
            raise CanvasValidationError(msg)
    if "memory_out" in region_names and any(r.carrier.carries_memory for r in regions.values()):
        msg = "a region named 'memory_out' clashes with predict_step's memory_out entry; rename it"
        raise CanvasValidationError(msg)
    keys = {module_key(n) for n in region_names}
    if len(keys) != len(region_names):
        msg = "region names must stay distinct when '.' is replaced by '__' (module keys)"
        raise CanvasValidationError(msg)
