"""``CanvasSchema`` (layout + topology + metadata, JSON round trip) and transfer distance."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from canvas_engineering._json_source import check_keys, dumps_strict, read_json_source, write_json
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.published_format import is_published, read_published, write_published
from canvas_engineering.declare.region import RegionSpec, validate_embedding
from canvas_engineering.declare.topology import CanvasTopology, Connection
from canvas_engineering.errors import CanvasValidationError, SchemaValidationError
from canvas_engineering.validation import check_finite_float, is_int

__all__ = ["SCHEMA_FORMAT_VERSION", "SchemaFormat", "CanvasSchema", "transfer_distance"]

#: Version written into every schema file.
SCHEMA_FORMAT_VERSION = 1

#: ``"native"``: this library's format (the default, with ``version``); ``"published"``: the
#: format of the published canvas-engineering packages (see ``declare/published_format.py``).
SchemaFormat = Literal["native", "published"]
_FORMATS = ("native", "published")


def _check_format(format: object) -> None:
    if format not in _FORMATS:
        msg = f"CanvasSchema: format={format!r} must be one of {', '.join(map(repr, _FORMATS))}"
        raise SchemaValidationError(msg)


def _embedding(x: RegionSpec | Sequence[float] | torch.Tensor, side: str) -> torch.Tensor:
    if isinstance(x, RegionSpec):
        if x.semantic_embedding is None:
            msg = f"transfer_distance: the {side} RegionSpec (bounds {x.bounds}) has no semantic_embedding"
            raise CanvasValidationError(msg)
        return torch.tensor(x.semantic_embedding, dtype=torch.float64)
    try:
        return torch.tensor(validate_embedding(x), dtype=torch.float64)
    except CanvasValidationError as err:
        msg = f"transfer_distance: the {side} vector: {err}"
        raise CanvasValidationError(msg) from None


def transfer_distance(a: RegionSpec | Sequence[float], b: RegionSpec | Sequence[float]) -> float:
    """Cosine distance ``1 - cos(a, b)`` between two semantic embeddings, in [0, 2].

    Accepts ``RegionSpec`` objects (their ``semantic_embedding``) or raw vectors.

    Raises:
        CanvasValidationError: a spec has no embedding, the dimensions differ, the
            specs declare different embedding models, or a vector is all zeros.

    """
    if isinstance(a, RegionSpec) and isinstance(b, RegionSpec):
        if a.embedding_model and b.embedding_model and a.embedding_model != b.embedding_model:
            msg = (
                f"transfer_distance: embedding models differ ({a.embedding_model!r} vs {b.embedding_model!r}); "
                "distances are only comparable within one embedding space"
            )
            raise CanvasValidationError(msg)
    va, vb = _embedding(a, "first"), _embedding(b, "second")
    if va.shape != vb.shape:
        msg = f"transfer_distance: embedding dimensions differ ({va.numel()} vs {vb.numel()})"
        raise CanvasValidationError(msg)
    if va.norm() == 0 or vb.norm() == 0:
        msg = "transfer_distance: an all-zero embedding has no direction"
        raise CanvasValidationError(msg)
    distance = 1.0 - torch.nn.functional.cosine_similarity(va, vb, dim=0)
    return float(distance.clamp(0.0, 2.0))  # rounding can step just outside [0, 2]


@dataclass(frozen=True)
class CanvasSchema:
    """The complete, portable declaration of a canvas model: layout + topology + metadata.

    Args:
        layout: the canvas geometry and regions.
        topology: the attention graph (default: dense over every region).
        metadata: free-form JSON-serialisable information (model, data, ...).

    Raises:
        ConnectionValidationError: the topology names a region the layout lacks.
        SchemaValidationError: metadata is not JSON-serialisable (NaN and infinities included:
            JSON has none) or nests more than ``MAX_JSON_DEPTH`` levels.

    """

    layout: CanvasLayout
    topology: CanvasTopology | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, CanvasLayout):
            msg = f"CanvasSchema.layout must be a CanvasLayout, got {type(self.layout).__name__}"
            raise SchemaValidationError(msg)
        if self.topology is None:
            object.__setattr__(self, "topology", CanvasTopology.dense(list(self.layout.regions)))
        self.topology.validate(self.layout)
        if not isinstance(self.metadata, Mapping):
            msg = f"CanvasSchema.metadata must be a mapping, got {type(self.metadata).__name__}"
            raise SchemaValidationError(msg)
        # refused now, not when the schema is written: to_json must never fail on metadata
        dumps_strict(dict(self.metadata), "CanvasSchema.metadata is not JSON-serialisable", SchemaValidationError)
        object.__setattr__(self, "metadata", dict(self.metadata))

    # -- serialisation ------------------------------------------------------------------

    def to_dict(self, format: SchemaFormat = "native") -> dict[str, Any]:
        """JSON-ready dict (``version``, ``layout``, ``topology``, ``metadata``).

        ``format="published"`` gives the published packages' layout instead (``schema_version``,
        ``layout``, ``regions``, ``topology`` list, ``metadata``), which every published release reads.

        Raises:
            SchemaValidationError: an unknown ``format``, or the schema holds what the published
                format cannot carry (a connection's ``temporal_fill`` other than ``hold`` or
                ``interpolation_order`` other than 1; the message names the connection).

        """
        _check_format(format)
        if format == "published":
            return write_published(self.layout, self.topology, self.metadata)
        return {
            "version": SCHEMA_FORMAT_VERSION,
            "layout": self.layout.to_dict(),
            "topology": self.topology.to_dict(),
            "metadata": self.metadata,
        }

    def to_json(
        self, path: str | os.PathLike[str] | None = None, indent: int = 2, format: SchemaFormat = "native"
    ) -> str:
        """Return the schema as JSON text; with ``path``, also written there atomically (temp file + rename).

        Missing parent folders of ``path`` are created. ``format="published"`` writes a file the
        published canvas-engineering packages (0.1.0-0.5.0) read (see :meth:`to_dict`).

        Raises:
            OSError: ``path`` cannot be written (the message names ``path``).
            SchemaValidationError: see :meth:`to_dict`; nothing is written.

        """
        return write_json(self.to_dict(format), path, indent, kind="schema", error=SchemaValidationError)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> CanvasSchema:
        """Load from JSON text or a file path (strictly: see :meth:`from_dict`), ours or a published package's.

        Raises:
            SchemaValidationError: naming the file (or ``schema JSON``) and the rule broken: the
                file cannot be read, is larger than 64 MiB or not UTF-8; the JSON is invalid,
                repeats a key in one object, holds NaN or Infinity or nests more than 100
                levels; or a key is unknown (with the closest allowed key), missing or bad.

        """
        data, where = read_json_source(source, "schema", SchemaValidationError)
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, data: object, where: str = "schema") -> CanvasSchema:
        """Build from a dict as written by :meth:`to_dict`, naming the first unknown, missing or bad key.

        Keys (``_json_source.FILE_KEYS`` lists them): ``layout`` (``T``, ``H``, ``W``,
        ``d_model``, ``regions`` required; ``t_current`` defaults to 0), each region (``bounds``
        required, every other ``RegionSpec`` field optional with its default) and ``topology``
        (``connections``, each with ``src`` and ``dst`` required and every other ``Connection``
        field optional) are required; ``version`` defaults to the current one and ``metadata``
        to ``{}``. Any other key is an error: a misspelled key is never ignored for a default.

        A file written by the published packages (it has ``schema_version`` or a top-level
        ``regions``) is read by their keys instead, exactly those keys and no others (see
        ``canvas_engineering.declare.published_format``).

        Raises:
            SchemaValidationError: naming ``where`` and the key.
            ConnectionValidationError: a connection names a region the layout lacks.

        """
        if is_published(data):
            layout, topology, metadata = read_published(data, where)
            try:
                return cls(layout=layout, topology=topology, metadata=metadata)
            except SchemaValidationError as err:
                msg = f"{where}: key 'metadata': {err}"
                raise SchemaValidationError(msg) from None
        reader = _KeyReader(where)
        root = reader.keys(data, "schema", "")
        version = root.get("version", SCHEMA_FORMAT_VERSION)
        if not is_int(version) or version != SCHEMA_FORMAT_VERSION:
            msg = f"{where}: key 'version' is {version!r}; this library reads version {SCHEMA_FORMAT_VERSION}"
            raise SchemaValidationError(msg)
        lay = reader.keys(reader.get(root, "layout", ""), "schema.layout", "layout")
        regions_raw = reader.mapping(reader.get(lay, "regions", "layout"), "layout.regions")
        regions = {}
        for name, spec in regions_raw.items():
            key = f"layout.regions.{name}"
            kwargs = reader.keys(spec, "schema.region", key)
            bounds = reader.get(kwargs, "bounds", key)
            if not isinstance(bounds, list):
                msg = f"{where}: key '{key}.bounds' must be a list of six integers, got {bounds!r}"
                raise SchemaValidationError(msg)
            kwargs["bounds"] = tuple(bounds)
            regions[name] = reader.build(RegionSpec, kwargs, key)
        layout = reader.build(
            CanvasLayout,
            {
                "T": reader.get(lay, "T", "layout"),
                "H": reader.get(lay, "H", "layout"),
                "W": reader.get(lay, "W", "layout"),
                "d_model": reader.get(lay, "d_model", "layout"),
                "regions": regions,
                "t_current": lay.get("t_current", 0),
            },
            "layout",
        )
        topo = reader.keys(reader.get(root, "topology", ""), "schema.topology", "topology")
        conns_raw = reader.get(topo, "connections", "topology")
        if not isinstance(conns_raw, list):
            msg = f"{where}: key 'topology.connections' must be a list, got {type(conns_raw).__name__}"
            raise SchemaValidationError(msg)
        conns = []
        for i, c in enumerate(conns_raw):
            key = f"topology.connections[{i}]"
            kwargs = reader.keys(c, "schema.connection", key)
            reader.get(kwargs, "src", key)
            reader.get(kwargs, "dst", key)
            conns.append(reader.build(Connection, kwargs, key))
        metadata = reader.mapping(root.get("metadata", {}), "metadata")
        try:
            return cls(layout=layout, topology=CanvasTopology(conns), metadata=dict(metadata))
        except SchemaValidationError as err:
            msg = f"{where}: key 'metadata': {err}"
            raise SchemaValidationError(msg) from None

    # -- semantics ----------------------------------------------------------------------

    def compatible_regions(self, other: CanvasSchema, threshold: float = 0.3) -> list[tuple[str, str, float]]:
        """Region pairs ``(mine, theirs, distance)`` whose transfer distance is <= ``threshold``.

        Only regions with semantic embeddings of equal size take part; sorted by distance.
        """
        check_finite_float(threshold, "compatible_regions: threshold", sep=" ")
        mine = _embedded(self.layout)
        theirs = _embedded(other.layout)
        pairs = []
        for (name_a, spec_a) in mine:
            for (name_b, spec_b) in theirs:
                if len(spec_a.semantic_embedding) != len(spec_b.semantic_embedding):
                    continue
                model_a, model_b = spec_a.embedding_model, spec_b.embedding_model
                if model_a and model_b and model_a != model_b:
                    continue
                d = transfer_distance(spec_a, spec_b)
                if d <= threshold:
                    pairs.append((name_a, name_b, d))
        return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))

    def summary(self) -> str:
        """Layout and topology summaries plus metadata."""
        meta = f"metadata: {json.dumps(self.metadata)}" if self.metadata else "metadata: (none)"
        return "\n".join([self.layout.summary(), self.topology.summary(), meta])


def _embedded(layout: CanvasLayout) -> list[tuple[str, RegionSpec]]:
    return [(n, s) for n, s in layout.regions.items() if s.semantic_embedding is not None and any(s.semantic_embedding)]


class _KeyReader:
    """Reads nested keys and turns construction errors into messages naming the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def mapping(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            msg = f"{self.where}: key {key or '(root)'!r} must be an object, got {type(value).__name__}"
            raise SchemaValidationError(msg)
        return value

    def keys(self, value: object, kind: str, key: str) -> dict[str, Any]:
        """Return the object at ``key``, refusing a non-object and unknown keys (missing ones: :meth:`get`)."""
        return check_keys(self.mapping(value, key), kind, self.where, key, SchemaValidationError, required=False)

    def get(self, obj: Mapping[str, Any], name: str, parent: str) -> Any:
        if name not in obj:
            full = f"{parent}.{name}" if parent else name
            msg = f"{self.where}: missing key {full!r}"
            raise SchemaValidationError(msg)
        return obj[name]

    def build(self, kind: type, kwargs: dict[str, Any], key: str) -> Any:
        try:
            return kind(**kwargs)
        except TypeError as err:
            msg = f"{self.where}: key {key!r}: {err}"
            raise SchemaValidationError(msg) from None
        except CanvasValidationError as err:
            msg = f"{self.where}: key {key!r}: {err}"
            raise SchemaValidationError(msg) from None
