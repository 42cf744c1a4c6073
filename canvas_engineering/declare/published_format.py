"""Schema files of the published canvas-engineering packages (0.1.0-0.5.0): read them, write them.

The published packages write one JSON layout (``"schema_version": "0.2.0"`` in every release)::

    {"schema_version": "0.2.0",
     "layout": {"T": 8, "H": 16, "W": 16, "d_model": 256, "t_current": 2},   # 0.1.x-0.4.x
               # 0.5.0: {"T": 8, "spatial_shape": [16, 16], "d_model": 256, "t_current": 2}
     "regions": {"visual": {"bounds": [0, 8, 0, 12, 0, 12], "period": 2, ...}, ...},
     "topology": [{"src": "visual", "dst": "visual", "weight": 0.5, ...}, ...],   # optional
     "metadata": {...}}                                                          # optional

Region and connection keys are written only when they differ from the published defaults.
:func:`is_published` tells the two formats apart, :func:`read_published` reads exactly the
keys listed in :data:`PUBLISHED_KEYS` (any other key is refused, naming it and the closest
allowed one), and :func:`write_published` writes a file every published release reads (``H``
and ``W``, which 0.5.0 reads too).

Published fields our declarations have no place for are kept, not dropped: a region's
``carrier`` and a connection's ``operator`` and ``write_mode`` (0.3.0+) are read into
``metadata["published_extras"]`` when they differ from the defaults and written back from
there. A 1-D ``spatial_shape`` ``[S]`` becomes ``H=S, W=1`` (bounds ``(t0, t1, s0, s1)`` gain
``(0, 1)``; flat positions are unchanged); more than two spatial axes are refused.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

from canvas_engineering._json_source import FILE_KEYS
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.topology import CanvasTopology, Connection, TemporalFill
from canvas_engineering.errors import CanvasValidationError, SchemaValidationError

__all__ = [
    "EXTRAS_KEY",
    "PUBLISHED_DEFAULTS",
    "PUBLISHED_KEYS",
    "PUBLISHED_SCHEMA_VERSION",
    "is_published",
    "read_published",
    "write_published",
]

#: ``schema_version`` every published release writes.
PUBLISHED_SCHEMA_VERSION: Final = "0.2.0"
#: Metadata key holding the published fields our declarations have no place for.
EXTRAS_KEY: Final = "published_extras"

#: Object kind -> ``(required keys, optional keys)`` of the published files (union of 0.1.0-0.5.0).
PUBLISHED_KEYS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "schema": (("layout", "regions"), ("schema_version", "topology", "metadata")),
    "layout": (("T", "d_model"), ("H", "W", "spatial_shape", "t_current")),
    # our region keys (one list of the region fields) plus the published "carrier"
    "region": (FILE_KEYS["schema.region"].required, (*FILE_KEYS["schema.region"].optional, "carrier")),
    "connection": (("src", "dst"), ("weight", "t_src", "t_dst", "fn", "operator", "write_mode")),
}

#: Published defaults of the fields that are written only when they differ.
PUBLISHED_DEFAULTS: Final[Mapping[str, Any]] = {
    "embedding_model": "openai/text-embedding-3-small",
    "default_attn": "cross_attention",
    "carrier": "deterministic",
    "operator": "attend",
    "write_mode": "add",
}


def is_published(data: object) -> bool:
    """Whether ``data`` (a parsed schema file) is in the published format, not ours.

    Published files carry ``schema_version`` and a top-level ``regions``; ours carry ``version``
    and keep the regions inside ``layout``.
    """
    return isinstance(data, Mapping) and ("schema_version" in data or "regions" in data)


def _keys(obj: object, kind: str, where: str, key: str) -> dict[str, Any]:
    """Return ``obj`` as a dict, refusing a non-object, an unknown key and a missing required key."""
    if not isinstance(obj, Mapping):
        msg = f"{where}: key {key or '(root)'!r} must be an object, got {type(obj).__name__}"
        raise SchemaValidationError(msg)
    required, optional = PUBLISHED_KEYS[kind]
    allowed = required + optional
    for name in obj:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            full = f"{key}.{name}" if key else str(name)
            msg = (
                f"{where}: unknown key {full!r}{hint}; keys allowed in "
                f"{repr(key) if key else 'the top level'} of a published schema file: {', '.join(allowed)}"
            )
            raise SchemaValidationError(msg)
    for name in required:
        if name not in obj:
            full = f"{key}.{name}" if key else name
            msg = f"{where}: missing key {full!r}"
            raise SchemaValidationError(msg)
    return dict(obj)


def _build(kind: type, kwargs: dict[str, Any], where: str, key: str) -> Any:
    try:
        return kind(**kwargs)
    except (TypeError, CanvasValidationError) as err:
        msg = f"{where}: key {key!r}: {err}"
        raise SchemaValidationError(msg) from None


def _int_list(value: object, where: str, key: str) -> list[int]:
    if not isinstance(value, list):
        msg = f"{where}: key {key!r} must be a list of integers, got {value!r}"
        raise SchemaValidationError(msg)
    return value


def _grid(lay: dict[str, Any], where: str) -> tuple[Any, Any, int]:
    """``(H, W, spatial axes)`` of a published layout (``H``/``W`` or ``spatial_shape``)."""
    has_hw = "H" in lay or "W" in lay
    if "spatial_shape" in lay:
        if has_hw:
            msg = f"{where}: key 'layout' gives both 'spatial_shape' and 'H'/'W'; give one"
            raise SchemaValidationError(msg)
        shape = _int_list(lay["spatial_shape"], where, "layout.spatial_shape")
        if len(shape) not in (1, 2):
            msg = (
                f"{where}: key 'layout.spatial_shape' is {shape!r}; this library's canvases have one or two "
                "spatial axes (H, W)"
            )
            raise SchemaValidationError(msg)
        return shape[0], shape[1] if len(shape) == 2 else 1, len(shape)
    for name in ("H", "W"):
        if name not in lay:
            msg = f"{where}: missing key 'layout.{name}' (a published layout gives 'H' and 'W', or 'spatial_shape')"
            raise SchemaValidationError(msg)
    return lay["H"], lay["W"], 2


def read_published(data: object, where: str) -> tuple[CanvasLayout, CanvasTopology, dict[str, Any]]:
    """Read a published schema file's content: ``(layout, topology, metadata)``.

    A missing ``topology`` is the dense topology (our ``CanvasSchema`` default); every
    missing region or connection key takes the published default.

    Raises:
        SchemaValidationError: naming ``where`` and the key: an unknown or missing key, a bad
            value, a ``schema_version`` that is not a string, or more than two spatial axes.
        ConnectionValidationError: a connection names a region the layout lacks.

    """
    root = _keys(data, "schema", where, "")
    version = root.get("schema_version", PUBLISHED_SCHEMA_VERSION)
    if not isinstance(version, str):
        msg = f"{where}: key 'schema_version' is {version!r}; published files give a version string such as '0.2.0'"
        raise SchemaValidationError(msg)
    lay = _keys(root["layout"], "layout", where, "layout")
    H, W, axes = _grid(lay, where)
    regions_raw = root["regions"]
    if not isinstance(regions_raw, Mapping):
        msg = f"{where}: key 'regions' must be an object, got {type(regions_raw).__name__}"
        raise SchemaValidationError(msg)
    regions: dict[str, RegionSpec] = {}
    carriers: dict[str, str] = {}
    for name, raw in regions_raw.items():
        key = f"regions.{name}"
        kwargs = _keys(raw, "region", where, key)
        bounds = _int_list(kwargs["bounds"], where, f"{key}.bounds")
        if axes == 1 and len(bounds) == 4:
            bounds = [*bounds, 0, 1]  # a 1-D grid is H=S, W=1: same flat positions
        kwargs["bounds"] = tuple(bounds)
        carrier = kwargs.pop("carrier", PUBLISHED_DEFAULTS["carrier"])
        if carrier != PUBLISHED_DEFAULTS["carrier"]:
            carriers[name] = carrier
        for field in ("embedding_model", "default_attn"):
            if kwargs.get(field) == PUBLISHED_DEFAULTS[field]:
                kwargs[field] = None  # our "undeclared" is the published default
        regions[name] = _build(RegionSpec, kwargs, where, key)
    layout = _build(
        CanvasLayout,
        {"T": lay["T"], "H": H, "W": W, "d_model": lay["d_model"], "regions": regions,
         "t_current": lay.get("t_current", 0)},
        where,
        "layout",
    )
    topology, operators = _read_connections(root, layout, where)
    metadata = root.get("metadata", {})
    if not isinstance(metadata, Mapping):
        msg = f"{where}: key 'metadata' must be an object, got {type(metadata).__name__}"
        raise SchemaValidationError(msg)
    metadata = dict(metadata)
    if carriers or operators:
        if EXTRAS_KEY in metadata:
            msg = f"{where}: key 'metadata.{EXTRAS_KEY}' is reserved for the published fields this library keeps there"
            raise SchemaValidationError(msg)
        metadata[EXTRAS_KEY] = {"carriers": carriers, "connections": operators}
    return layout, topology, metadata


def _read_connections(
    root: dict[str, Any], layout: CanvasLayout, where: str
) -> tuple[CanvasTopology, list[dict[str, Any]]]:
    if "topology" not in root:
        return CanvasTopology.dense(list(layout.regions)), []
    raw = root["topology"]
    if not isinstance(raw, list):
        msg = f"{where}: key 'topology' must be a list of connections, got {type(raw).__name__}"
        raise SchemaValidationError(msg)
    conns, operators = [], []
    for i, c in enumerate(raw):
        key = f"topology[{i}]"
        kwargs = _keys(c, "connection", where, key)
        extra = {f: kwargs.pop(f) for f in ("operator", "write_mode") if f in kwargs}
        extra = {f: v for f, v in extra.items() if v != PUBLISHED_DEFAULTS[f]}
        if extra:
            operators.append({"index": i, "src": kwargs["src"], "dst": kwargs["dst"], **extra})
        conns.append(_build(Connection, kwargs, where, key))
    topology = CanvasTopology(conns)
    topology.validate(layout)
    return topology, operators


def write_published(layout: CanvasLayout, topology: CanvasTopology, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Return the published-format dict of a schema (every published release reads it).

    Raises:
        SchemaValidationError: a connection's ``temporal_fill`` is not ``HOLD`` or its
            ``interpolation_order`` is not 1 (published files cannot carry either: the published
            reader would silently use the defaults), or ``metadata["published_extras"]`` names
            a region or connection the schema lacks.

    """
    regions = {}
    meta = dict(metadata)
    extras = meta.pop(EXTRAS_KEY, {}) or {}
    carriers = dict(extras.get("carriers", {}))
    for name, spec in layout.regions.items():
        out: dict[str, Any] = {"bounds": list(spec.bounds)}
        if spec.period != 1:
            out["period"] = spec.period
        if not spec.is_output:
            out["is_output"] = False
        if spec.loss_weight != 1.0:
            out["loss_weight"] = spec.loss_weight
        if spec.semantic_type is not None:
            out["semantic_type"] = spec.semantic_type
        if spec.semantic_embedding is not None:
            out["semantic_embedding"] = list(spec.semantic_embedding)
        for field in ("embedding_model", "default_attn"):
            value = getattr(spec, field)
            if value is not None and value != PUBLISHED_DEFAULTS[field]:
                out[field] = value
        if name in carriers:
            out["carrier"] = carriers.pop(name)
        regions[name] = out
    if carriers:
        msg = f"CanvasSchema metadata {EXTRAS_KEY!r} names carriers of regions the layout lacks: {sorted(carriers)}"
        raise SchemaValidationError(msg)
    ops = {e["index"]: e for e in extras.get("connections", [])}
    conns = []
    for i, c in enumerate(topology.connections):
        if c.temporal_fill is not TemporalFill.HOLD or c.interpolation_order != 1:
            msg = (
                f"{c.label} (#{i}): temporal_fill={c.temporal_fill.value!r} interpolation_order="
                f"{c.interpolation_order!r} cannot be written in the published format (its files carry neither; "
                "the published reader would use 'hold' and 1); write our format instead"
            )
            raise SchemaValidationError(msg)
        out = {"src": c.src, "dst": c.dst}
        for field, default in (("weight", 1.0), ("t_src", None), ("t_dst", None), ("fn", None)):
            if getattr(c, field) != default:
                out[field] = getattr(c, field)
        extra = ops.pop(i, None)
        if extra is not None:
            if (extra.get("src"), extra.get("dst")) != (c.src, c.dst):
                msg = (
                    f"CanvasSchema metadata {EXTRAS_KEY!r}: connection #{i} was {extra.get('src')!r}->"
                    f"{extra.get('dst')!r} when read, now {c.src!r}->{c.dst!r}; update the extras or drop them"
                )
                raise SchemaValidationError(msg)
            out.update({f: extra[f] for f in ("operator", "write_mode") if f in extra})
        conns.append(out)
    if ops:
        msg = f"CanvasSchema metadata {EXTRAS_KEY!r} names connections the topology lacks: indices {sorted(ops)}"
        raise SchemaValidationError(msg)
    data: dict[str, Any] = {
        "schema_version": PUBLISHED_SCHEMA_VERSION,
        "layout": {"T": layout.T, "H": layout.H, "W": layout.W, "d_model": layout.d_model,
                   "t_current": layout.t_current},
        "regions": regions,
        "topology": conns,
    }
    if meta:
        data["metadata"] = meta
    return data
