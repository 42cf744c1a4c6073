"""Typed layer: ``Field`` classes compiled to schemas, semantic embeddings, packing, presets."""

from __future__ import annotations

from canvas_engineering.typed.fields import (
    CONNECTIVITY_POLICIES,
    FAMILIES,
    BoundSchema,
    ConnectivityPolicy,
    Family,
    Field,
    FieldValidationError,
    PackingError,
    RegionView,
    TypedSchemaError,
    compile_schema,
)

__all__ = [
    "BoundSchema",
    "CONNECTIVITY_POLICIES",
    "ConnectivityPolicy",
    "FAMILIES",
    "Family",
    "Field",
    "FieldValidationError",
    "PackingError",
    "RegionView",
    "TypedSchemaError",
    "compile_schema",
]
