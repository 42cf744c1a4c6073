"""Typed canvases: declare regions as attributes of Python types, compile them to a schema.

A :class:`Field` is one latent region: ``h x w`` grid cells per frame. Put Fields on a
dataclass, a pydantic model or a plain object; types compose (an attribute holding
another typed object), specialise (a subclass adds fields) and replicate (a list of
typed objects or of Fields). :func:`compile_schema` flattens the hierarchy into regions
named by dotted path (``arm.joints``, ``robots[1].camera``), packs them onto the grid,
wires connections by a policy and returns a :class:`BoundSchema`.

What the compiler reads
-----------------------
* Attributes in declaration order: dataclass fields, then pydantic model fields, then
  public class attributes (base classes first) and public instance attributes. Names
  starting with ``_`` are skipped.
* A ``Field`` is a region; a ``list``/``tuple`` yields one path per element
  (``name[i]``); any other object is walked as a nested type if it holds Fields.
  Plain values (numbers, strings, tensors, modules, dicts, nested lists, ...), objects
  without Fields and back-references to an enclosing object are ignored.
* A class instead of an instance is instantiated with no arguments.

Regions
-------
A Field with ``period`` p occupies its ``h x w`` cells in canvas frames
``0 .. ceil(T / p) - 1``, which stand for real frames ``0, p, 2p, ...`` (a
``RegionSpec`` with that period); the cells stay reserved in every frame.

Wiring (``connectivity=``)
--------------------------
``"hierarchical"`` (default): every field attends itself; fields of the same object
attend each other; an object's fields and those of its nearest ancestor with fields
attend each other; elements of one list attend each other's corresponding fields.
``"causal"``: the same pairs with frame offsets as in ``CanvasTopology.causal_temporal``.
``"dense"``, ``"isolated"``, or a ``CanvasTopology``. The exact rules are in
:func:`canvas_engineering.typed.packing.hierarchical_pairs` and :func:`~canvas_engineering.typed.packing.wire`.
Connections leave ``fn`` unset, so each uses its source field's ``attn``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, cast, get_args

import torch

from canvas_engineering.declare.attention_vocabulary import DEFAULT_ATTENTION, check_attention_type
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec, validate_embedding
from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.spatiotemporal_canvas import SpatiotemporalCanvas
from canvas_engineering.declare.topology import CanvasTopology
from canvas_engineering.errors import (  # the typed errors live there; re-exported here
    CanvasValidationError,
    FieldValidationError,
    PackingError,
    RegionValidationError,
    TypedSchemaError,
    UnknownRegionError,
)
from canvas_engineering.program.vocabulary import CARRIERS
from canvas_engineering.typed.packing import (
    CONNECTIVITY_POLICIES,
    LAYOUT_STRATEGIES,
    ConnectivityPolicy,
    LayoutStrategy,
    PackItem,
    TypeNode,
    auto_size,
    is_walkable,
    pack,
    walk,
    wire,
)
from canvas_engineering.typed.semantic import (
    EmbedFn,
    SemanticConditioner,
    auto_semantic_type,
    compute_semantic_embeddings,
)
from canvas_engineering.validation import (
    check_bool,
    check_choice,
    check_finite_float,
    check_int,
    check_positive_int,
)

__all__ = [
    "CONNECTIVITY_POLICIES",
    "FAMILIES",
    "BoundSchema",
    "ConnectivityPolicy",
    "Family",
    "Field",
    "FieldValidationError",
    "PackingError",
    "RegionView",
    "TypedSchemaError",
    "compile_schema",
]

#: Region families of the program layer (``Field.family``).
Family = Literal["observation", "state", "memory", "residual", "action"]
FAMILIES: tuple[str, ...] = get_args(Family)


# -- Field --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One latent region of a typed canvas: ``h x w`` grid cells per frame.

    A Field is checked by :func:`compile_schema` (or :meth:`check`), which knows its
    dotted path, so every error names the field (``field 'arm.joints': h=0 ...``).

    Args:
        h: grid rows (integer >= 1).
        w: grid columns (integer >= 1).
        period: real frames per canvas frame (integer >= 1); the region has
            ``ceil(T / period)`` canvas frames.
        is_output: whether the region takes part in the diffusion loss.
        loss_weight: relative loss weight (finite, >= 0).
        attn: attention type of connections leaving this region (a declared or
            installed attention type name).
        semantic_type: description of the modality (default: read from the path,
            ``arm.joints`` -> ``"arm joints"``).
        family: role for the program layer: one of ``FAMILIES`` or ``None``.
        tags: sub-tags within the family, e.g. ``("belief", "object")`` (non-empty strings;
            kept in the schema's ``metadata["typed"]["tags"]``).
        carrier: how the region is predicted (one of the program layer's ``CARRIERS``) or
            ``None``; kept in ``metadata["typed"]["carriers"]`` for ``CanvasProgram``.
        temporal_extent: canvas frames the region spans (integer >= 1; more than ``T`` is
            clipped to ``T``, as in the published package). ``None``: ``ceil(T / period)``,
            the frames whose real times lie within the canvas; a larger extent makes a slow
            region reach real frames beyond ``T``.
        spatial_shape: the published spelling of ``(h, w)``: ``(h, w)`` or ``(h,)`` (then
            ``w = 1``), with ``h`` and ``w`` left at 1. Always ``(h, w)`` once built.

    Example::

        >>> @dataclass
        ... class Arm:
        ...     joints: Field = Field(1, 7, family="state")
        ...     command: Field = Field(1, 7, loss_weight=2.0, family="action")

    """

    h: int = 1  #: rows per frame
    w: int = 1  #: columns per frame
    period: int = 1  #: 1 = every frame
    is_output: bool = True  #: in the diffusion loss
    loss_weight: float = 1.0  #: relative weight of its positions
    attn: str = DEFAULT_ATTENTION  #: default attention type of outgoing connections
    semantic_type: str | None = None  #: None: auto_semantic_type(path)
    family: Family | None = None  #: observation / state / memory / residual / action
    tags: tuple[str, ...] = ()  #: sub-tags within the family
    carrier: str | None = None  #: one of the program layer's CARRIERS, or None
    temporal_extent: int | None = None  #: canvas frames; None: ceil(T / period)
    spatial_shape: tuple[int, ...] | None = None  #: published spelling of (h, w); set to (h, w)

    def __post_init__(self) -> None:
        # Only normalisation here; check(path) validates, so its errors can name the field.
        if isinstance(self.tags, list):
            object.__setattr__(self, "tags", tuple(self.tags))
        shape = self.spatial_shape
        if shape is None:
            object.__setattr__(self, "spatial_shape", (self.h, self.w))
        elif isinstance(shape, (tuple, list)) and len(shape) in (1, 2) and (self.h, self.w) == (1, 1):
            object.__setattr__(self, "h", shape[0])
            object.__setattr__(self, "w", shape[1] if len(shape) == 2 else 1)
            object.__setattr__(self, "spatial_shape", (self.h, self.w))

    @property
    def num_positions(self) -> int:
        """Cells per frame, ``h * w``."""
        return self.h * self.w

    def num_frames(self, T: int) -> int:
        """Canvas frames of the region on a ``T``-frame canvas.

        ``temporal_extent`` (at most ``T``) if declared, else ``ceil(T / period)``.
        """
        if self.temporal_extent is not None:
            return min(self.temporal_extent, T)
        return -(-T // self.period)

    def check(self, path: str) -> None:
        """Validate every option.

        Raises:
            FieldValidationError: naming ``path``, the option, its value and the rule.
            UnknownAttentionTypeError: ``attn`` is not a known attention type (names ``path``).

        """
        error = functools.partial(FieldValidationError, path=path)
        where = f"field {path!r}: "
        for name in ("h", "w", "period"):
            check_positive_int(getattr(self, name), where + name, error=error)
        check_bool(self.is_output, where + "is_output", error=error)
        check_finite_float(self.loss_weight, where + "loss_weight", error=error, minimum=0)
        if self.semantic_type is not None and (not isinstance(self.semantic_type, str) or not self.semantic_type):
            msg = f"{where}semantic_type={self.semantic_type!r} must be a non-empty string or None"
            raise FieldValidationError(msg, path=path)
        check_choice(self.family, where + "family", (*FAMILIES, None), error=error)
        check_choice(self.carrier, where + "carrier", (*CARRIERS, None), error=error)
        if self.temporal_extent is not None:
            check_positive_int(self.temporal_extent, where + "temporal_extent", error=error)
        if not isinstance(self.tags, tuple) or not all(isinstance(t, str) and t for t in self.tags):
            msg = f"{where}tags={self.tags!r} must be a tuple of non-empty strings"
            raise FieldValidationError(msg, path=path)
        if self.spatial_shape != (self.h, self.w):
            msg = (
                f"{where}spatial_shape={self.spatial_shape!r} must be (h,) or (h, w) with h and w left at 1 "
                f"(got h={self.h}, w={self.w}); the canvas grid has two spatial axes"
            )
            raise FieldValidationError(msg, path=path)
        check_attention_type(self.attn, f"field {path!r}: attn")


def _collect(flat: dict[str, Field]) -> Callable[[str, object], None]:
    def on_field(path: str, field: object) -> None:
        field = cast(Field, field)  # walk() only reports values that pass _is_field
        field.check(path)
        flat[path] = field

    return on_field


def _is_field(value: object) -> bool:
    return isinstance(value, Field)


def _instantiate(cls: type) -> object:
    """``cls()``, or an error naming the class and what it needs."""
    try:
        return cls()
    except TypeError as err:
        if dataclasses.is_dataclass(cls):
            missing = [
                f.name
                for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
        else:
            fields = getattr(cls, "model_fields", {})
            missing = [n for n, f in fields.items() if getattr(f, "is_required", lambda: False)()]
        need = f"fields without defaults: {', '.join(missing)}" if missing else str(err)
        msg = f"compile_schema: cannot build {cls.__qualname__}() without arguments ({need}); pass an instance instead"
        raise TypedSchemaError(msg) from None


# -- bound schema -------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionView:
    """One compiled field of a :class:`BoundSchema`: its region and canvas access.

    Args:
        bound: the bound schema.
        path: the field's dotted path (its region name).

    """

    bound: BoundSchema = dataclasses.field(repr=False)
    path: str

    @property
    def spec(self) -> RegionSpec:
        """The region's ``RegionSpec``."""
        return self.bound.layout.regions[self.path]

    @property
    def field(self) -> Field:
        """The declared :class:`Field`."""
        return self.bound.fields[self.path]

    @property
    def indices(self) -> torch.Tensor:
        """(n,) flat canvas indices of the region, (t, h, w)-major (a fresh LongTensor)."""
        return self.bound.layout.region_indices(self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, h, w)`` of the region."""
        return self.spec.shape

    @property
    def num_positions(self) -> int:
        """Number of canvas positions of the region."""
        return self.spec.size

    def place(self, canvas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return a copy of ``canvas`` (B, N, d_model) with this region set to ``x`` (differentiable).

        ``x`` is (B, n, d_model) or (B, frames, h, w, d_model).
        """
        return self.bound._ops.place(canvas, x, self.path)

    def extract(self, canvas: torch.Tensor, *, grid: bool = False) -> torch.Tensor:
        """Return the region's tokens: (B, n, d_model), or (B, frames, h, w, d_model) with ``grid=True``."""
        tokens = self.bound._ops.extract(canvas, self.path)
        return tokens.reshape(tokens.shape[0], *self.shape, tokens.shape[-1]) if grid else tokens


@dataclass(frozen=True)
class BoundSchema:
    """A compiled typed object: a :class:`CanvasSchema` plus its fields by dotted path.

    Args:
        schema: the compiled layout + topology + metadata.
        fields: path -> declared :class:`Field`, in region order.

    Example::

        >>> bound = compile_schema(Robot(), T=4, d_model=32)
        >>> batch = bound.create_batch(2)                       # (2, N, 32) zeros
        >>> batch = bound["arm.joints"].place(batch, joints)     # (2, n, 32) tokens
        >>> bound["arm.joints"].extract(batch).shape

    """

    schema: CanvasSchema
    fields: Mapping[str, Field]

    def __post_init__(self) -> None:
        missing = [p for p in self.fields if p not in self.schema.layout.regions]
        if missing:
            msg = f"BoundSchema: fields {', '.join(map(repr, missing))} have no region in the layout"
            raise TypedSchemaError(msg)
        object.__setattr__(self, "fields", types.MappingProxyType(dict(self.fields)))

    @property
    def layout(self) -> CanvasLayout:
        """The compiled ``CanvasLayout``."""
        return self.schema.layout

    @property
    def topology(self) -> CanvasTopology:
        """The compiled ``CanvasTopology``."""
        return self.schema.topology

    @property
    def field_paths(self) -> tuple[str, ...]:
        """Every field path, in region order."""
        return tuple(self.fields)

    @property
    def field_names(self) -> list[str]:
        """Every field path, in region order, as a list (the published name of :attr:`field_paths`)."""
        return list(self.fields)

    def build_semantic_conditioner(
        self,
        embed_fn: Callable[[list[str]], Sequence[Sequence[float] | torch.Tensor]],
        embed_dim: int = 1536,
        freeze_embeddings: bool = True,
        learn_residuals: bool = True,
    ) -> SemanticConditioner:
        """Embed every field's semantic type in one call and return a :class:`SemanticConditioner` for them.

        The published 0.5.0 method: ``embed_fn`` takes the list of descriptions (each region's
        ``semantic_type``, in :attr:`field_names` order) and returns one vector per description.
        Add the conditioning with ``conditioner(canvas)``. (``compile_schema(..., embed_fn=f)``
        with a one-description ``f`` stores the embeddings in the schema instead.)

        Raises:
            RegionValidationError: ``embed_fn`` returned the wrong number of vectors or a bad
                vector (the message names the field).
            CanvasValidationError: a vector's size is not ``embed_dim``.

        """
        if not callable(embed_fn):
            msg = f"build_semantic_conditioner: embed_fn must be callable, got {type(embed_fn).__name__}"
            raise CanvasValidationError(msg)
        paths = self.field_names
        texts = [self.layout.regions[p].semantic_type or auto_semantic_type(p) for p in paths]
        vectors = embed_fn(texts)
        if isinstance(vectors, torch.Tensor):
            vectors = list(vectors)
        if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Sequence) or len(vectors) != len(paths):
            count = len(vectors) if isinstance(vectors, Sequence) else type(vectors).__name__
            msg = (
                f"build_semantic_conditioner: embed_fn(texts) must return one vector per field "
                f"({len(paths)}), got {count}; it takes the list of descriptions (the published contract)"
            )
            raise RegionValidationError(msg)
        lay = self.layout
        regions = dict(lay.regions)  # a hand-built BoundSchema may have regions without a field
        for path, text, vector in zip(paths, texts, vectors, strict=True):
            try:
                embedding = validate_embedding(vector)
            except RegionValidationError as err:
                msg = f"region {path!r}: embed_fn returned a bad vector for {text!r}: {err}"
                raise RegionValidationError(msg) from None
            regions[path] = dataclasses.replace(self.layout.regions[path], semantic_embedding=embedding)
        embedded = CanvasLayout(
            T=lay.T, H=lay.H, W=lay.W, d_model=lay.d_model, regions=regions, t_current=lay.t_current
        )
        return SemanticConditioner(
            embedded, embed_dim=embed_dim, freeze_embeddings=freeze_embeddings, learn_residuals=learn_residuals
        )

    @property
    def families(self) -> dict[str, str]:
        """Map of path -> family, for the fields that declare one."""
        return {p: f.family for p, f in self.fields.items() if f.family is not None}

    def __getitem__(self, path: str) -> RegionView:
        if path not in self.fields:
            msg = f"no field {path!r}; fields: {', '.join(self.fields) or '(none)'}"
            raise UnknownRegionError(msg)
        return RegionView(self, path)

    def __contains__(self, path: object) -> bool:
        return path in self.fields

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @cached_property
    def _ops(self) -> SpatiotemporalCanvas:
        return SpatiotemporalCanvas(self.layout)  # place/extract only; never trained

    def build_canvas(self) -> SpatiotemporalCanvas:
        """Return a new ``SpatiotemporalCanvas`` (encodings + learned region embeddings) for the layout."""
        return SpatiotemporalCanvas(self.layout)

    def create_batch(
        self, batch_size: int, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Return a zero canvas batch of shape ``(batch_size, N, d_model)``."""
        return self._ops.create_empty(batch_size, device=device, dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        """Return the schema's JSON-ready dict."""
        return self.schema.to_dict()

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """Return the schema as JSON (see :meth:`CanvasSchema.to_json`)."""
        return self.schema.to_json(path, indent=indent)

    def summary(self) -> str:
        """Return a readable table of fields, their regions and the wiring."""
        lay = self.layout
        used = sum(spec.size for spec in lay.regions.values())
        typed = self.schema.metadata.get("typed", {})
        width = max([len(p) for p in self.fields] + [5]) + 2
        lines = [
            f"BoundSchema {typed.get('root', '?')}: {len(self.fields)} fields on T={lay.T} H={lay.H} W={lay.W} "
            f"d_model={lay.d_model} ({used:,} of {lay.num_positions:,} positions used)",
            f"  {'field':<{width}}{'bounds':<24}{'positions':>10}{'period':>8}{'weight':>8}  {'family':<12}attn",
        ]
        for path, spec in lay.regions.items():
            field = self.fields[path]
            bounds = "(" + ",".join(map(str, spec.bounds)) + ")"
            weight = f"{spec.loss_weight:.2f}" if spec.is_output else "-"
            lines.append(
                f"  {path:<{width}}{bounds:<24}{spec.size:>10,}{spec.period:>8}{weight:>8}  "
                f"{field.family or '-':<12}{field.attn}"
            )
        lines.append(
            f"  wiring: {typed.get('connectivity', 'custom')}, {len(self.topology.connections)} connections; "
            f"packing: {typed.get('layout_strategy', '?')}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# -- compile ---------------------------------------------------------------------------------


def compile_schema(
    obj: object,
    *,
    T: int = 1,
    H: int | None = None,
    W: int | None = None,
    d_model: int = 64,
    connectivity: ConnectivityPolicy | CanvasTopology = "hierarchical",
    layout_strategy: LayoutStrategy = "packed",
    t_current: int = 0,
    embed_fn: EmbedFn | None = None,
    embedding_model: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> BoundSchema:
    """Flatten a typed object into regions, pack them, wire them, and bind the result.

    Deterministic: the same type (and options) always gives the same schema.

    Args:
        obj: a dataclass / pydantic / plain instance holding :class:`Field` attributes, or
            a class that can be built with no arguments.
        T: canvas frames.
        H: grid height (``None``: auto-size, see :func:`canvas_engineering.typed.packing.auto_size`).
        W: grid width (``None``: auto-size).
        d_model: token width.
        connectivity: a policy name (``"hierarchical"``, ``"causal"``, ``"dense"``,
            ``"isolated"``; see the module docstring) or a ``CanvasTopology`` to use as is.
        layout_strategy: ``"packed"`` (shelf packing in declaration order) or ``"rows"``
            (one field per row band); see :mod:`canvas_engineering.typed.packing`.
        t_current: first "future" canvas frame (``CanvasLayout.t_current``).
        embed_fn: optional ``str -> vector`` function; when given, every region's
            ``semantic_embedding`` is ``embed_fn(semantic_type)`` (called once per field).
        embedding_model: identifier stored as each region's ``embedding_model``
            (default: ``embed_fn.embedding_model`` if it has one).
        metadata: extra JSON-serialisable metadata (the key ``"typed"`` is reserved).

    Returns:
        A :class:`BoundSchema` whose regions are named by dotted path.

    Raises:
        FieldValidationError: a Field option is invalid (names the field path).
        PackingError: the fields do not fit on the given ``H x W`` (names them).
        TypedSchemaError: no Field found, a class that needs arguments, or an unknown
            policy / strategy name.

    """
    for name, value in (("T", T), ("d_model", d_model)):
        check_positive_int(value, f"compile_schema: {name}", error=TypedSchemaError)
    for name, value in (("H", H), ("W", W)):
        if value is not None:
            check_int(
                value,
                f"compile_schema: {name}",
                error=TypedSchemaError,
                minimum=1,
                rule="an integer >= 1 or None (auto-size)",
            )
    if not isinstance(connectivity, CanvasTopology) and connectivity not in CONNECTIVITY_POLICIES:
        choices = ", ".join(CONNECTIVITY_POLICIES)
        msg = f"compile_schema: connectivity={connectivity!r} must be a CanvasTopology or one of {choices}"
        raise TypedSchemaError(msg)
    check_choice(layout_strategy, "compile_schema: layout_strategy", LAYOUT_STRATEGIES, error=TypedSchemaError)
    if metadata is not None and (not isinstance(metadata, Mapping) or "typed" in metadata):
        msg = "compile_schema: metadata must be a mapping without the reserved key 'typed'"
        raise TypedSchemaError(msg)
    if isinstance(obj, type):
        obj = _instantiate(obj)
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, Field) or not is_walkable(obj):
        msg = f"compile_schema: expected an object (or class) with Field attributes, got {type(obj).__name__}"
        raise TypedSchemaError(msg)

    flat: dict[str, Field] = {}
    root = walk(obj, _is_field, _collect(flat)) or TypeNode("")
    if not flat:
        msg = f"compile_schema: {kind} has no Field attributes (nested objects and lists are searched too)"
        raise TypedSchemaError(msg)

    items = [PackItem(path, f.h, f.w) for path, f in flat.items()]
    H, W = auto_size(items, layout_strategy, H, W)
    packed = pack(items, H, W, layout_strategy)
    if not packed.fits:
        sizes = ", ".join(f"{p!r} ({flat[p].h}x{flat[p].w})" for p in packed.unplaced)
        need_h, need_w = auto_size(items, layout_strategy)
        msg = (
            f"compile_schema: {len(packed.unplaced)} field(s) do not fit on the {H}x{W} grid "
            f"({layout_strategy} packing): {sizes}; the smallest grid that fits is H={need_h}, W={need_w} "
            "(omit H and W to auto-size)"
        )
        raise PackingError(msg, unplaced=packed.unplaced)

    semantic = {path: f.semantic_type or auto_semantic_type(path) for path, f in flat.items()}
    vectors = compute_semantic_embeddings(flat, embed_fn, semantic) if embed_fn is not None else {}
    if embed_fn is not None and embedding_model is None:
        embedding_model = getattr(embed_fn, "embedding_model", None)
    regions = {}
    for path, f in flat.items():
        h0, h1, w0, w1 = packed.placements[path]
        regions[path] = RegionSpec(
            bounds=(0, f.num_frames(T), h0, h1, w0, w1),
            period=f.period,
            is_output=f.is_output,
            loss_weight=f.loss_weight,
            semantic_type=semantic[path],
            semantic_embedding=vectors.get(path),
            embedding_model=embedding_model if path in vectors else None,
            default_attn=f.attn,
        )
    layout = CanvasLayout(T=T, H=H, W=W, d_model=d_model, regions=regions, t_current=t_current)
    topology = wire(connectivity, root, list(flat))
    typed = {
        "root": kind,
        "connectivity": connectivity if isinstance(connectivity, str) else "custom",
        "layout_strategy": layout_strategy,
        "families": {p: f.family for p, f in flat.items() if f.family is not None},
    }
    # published Field options the program layer reads; only present when declared
    carriers = {p: f.carrier for p, f in flat.items() if f.carrier is not None}
    tags = {p: list(f.tags) for p, f in flat.items() if f.tags}
    typed.update({"carriers": carriers} if carriers else {})
    typed.update({"tags": tags} if tags else {})
    schema = CanvasSchema(layout=layout, topology=topology, metadata={**(metadata or {}), "typed": typed})
    return BoundSchema(schema=schema, fields=flat)
