"""Semantic conditioning: what each region *means*, as a vector the model is told.

Regions compiled from typed objects are named by path (``arm.joints``), and the path
reads as a description (:func:`auto_semantic_type` gives ``"arm joints"``). An embedding
function of your choice turns descriptions into vectors
(:func:`compute_semantic_embeddings`; nothing is downloaded, and :func:`hashing_embed`
is a deterministic toy for tests and examples). The vectors go into each
``RegionSpec.semantic_embedding``, where three things read them:

* :class:`SemanticConditioner` projects each region's frozen embedding into ``d_model``
  through one projection shared by every region, adds a zero-initialised per-region
  residual, and adds the result to that region's tokens. Regions with the same meaning
  get the same vector, so two schemas with aligned semantics can share weights.
* :meth:`CanvasSchema.compatible_regions` pairs regions of two schemas by distance.
* :func:`transfer_distance` is the cosine distance of two embeddings.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import validate_embedding
from canvas_engineering.errors import CanvasValidationError, RegionValidationError
from canvas_engineering.validation import check_bool, check_positive_int

if TYPE_CHECKING:
    from canvas_engineering.declare.schema import CanvasSchema

__all__ = [
    "EmbedFn",
    "SemanticConditioner",
    "auto_semantic_type",
    "compute_semantic_embeddings",
    "hashing_embed",
]

#: An embedding function: one description in, one 1-D vector (sequence, array or tensor) out.
EmbedFn = Callable[[str], Sequence[float] | torch.Tensor]


class HasLayout(Protocol):
    """Anything carrying a ``layout`` (a ``CanvasSchema``, a typed ``BoundSchema``, ...).

    A protocol, so this module needs no import of :mod:`canvas_engineering.typed.fields` (which imports it).
    """

    @property
    def layout(self) -> CanvasLayout:
        """The canvas layout."""
        ...


def auto_semantic_type(path: str) -> str:
    """Return a readable description of a region path.

    Dots, list brackets and underscores become spaces; case is kept.

    Example::

        >>> auto_semantic_type("arm.joints")
        'arm joints'
        >>> auto_semantic_type("robots[1].front_camera")
        'robots 1 front camera'
    """
    if not isinstance(path, str) or not path:
        msg = f"auto_semantic_type: path {path!r} must be a non-empty string"
        raise CanvasValidationError(msg)
    return " ".join(re.split(r"[.\[\]_\s]+", path)).strip()


def hashing_embed(text: str, dim: int = 64) -> tuple[float, ...]:
    """Return a deterministic toy text embedding: hashed bag of character trigrams, L2-normalised.

    The text is lower-cased, its whitespace collapsed and padded with spaces; each
    character trigram adds ``+1`` or ``-1`` (both chosen by a BLAKE2b hash of the trigram)
    to one of ``dim`` buckets. Texts sharing many trigrams get nearby vectors. It needs no
    model and no download; use a real text-embedding model for real semantics. Pass
    ``functools.partial(hashing_embed, dim=32)`` for another size.

    Raises:
        CanvasValidationError: ``text`` is not a string or ``dim`` is not an integer >= 1.

    """
    if not isinstance(text, str):
        msg = f"hashing_embed: text must be a string, got {type(text).__name__}"
        raise CanvasValidationError(msg)
    check_positive_int(dim, "hashing_embed: dim")
    padded = "  " + " ".join(text.lower().split()) + " "
    signed = [0.0] * dim
    counts = [0.0] * dim
    for i in range(len(padded) - 2):
        code = int.from_bytes(hashlib.blake2b(padded[i : i + 3].encode(), digest_size=8).digest(), "little")
        bucket = code % dim
        signed[bucket] += 1.0 if code >> 63 else -1.0
        counts[bucket] += 1.0
    vec = signed if any(signed) else counts  # signs can cancel exactly; counts never vanish
    norm = math.sqrt(sum(x * x for x in vec))
    return tuple(x / norm for x in vec)


def compute_semantic_embeddings(
    paths: Iterable[str], embed_fn: EmbedFn, semantic_types: Mapping[str, str] | None = None
) -> dict[str, tuple[float, ...]]:
    """Embed each path's semantic type with ``embed_fn``, calling it once per path.

    Args:
        paths: region paths, e.g. ``bound.field_paths``.
        embed_fn: any function ``str -> 1-D vector`` (sequence, numpy array or tensor).
        semantic_types: path -> description; a path not in it is described by
            :func:`auto_semantic_type`.

    Returns:
        path -> embedding tuple, in the order of ``paths``.

    Raises:
        RegionValidationError: ``embed_fn`` returned something that is not a finite 1-D
            vector, or vectors of different sizes; the message names the path.

    """
    if not callable(embed_fn):
        msg = f"compute_semantic_embeddings: embed_fn must be callable, got {type(embed_fn).__name__}"
        raise CanvasValidationError(msg)
    semantic_types = dict(semantic_types or {})
    out: dict[str, tuple[float, ...]] = {}
    first: str | None = None
    for path in paths:
        text = semantic_types.get(path) or auto_semantic_type(path)
        try:
            vec = validate_embedding(embed_fn(text))
        except RegionValidationError as err:
            msg = f"region {path!r}: embed_fn({text!r}) returned a bad vector: {err}"
            raise RegionValidationError(msg) from None
        if first is not None and len(vec) != len(out[first]):
            msg = (
                f"region {path!r}: embed_fn({text!r}) returned {len(vec)} numbers but region {first!r} "
                f"got {len(out[first])}; every embedding must have the same size"
            )
            raise RegionValidationError(msg)
        first = first or path
        out[path] = vec
    return out


def _layout_of(source: object) -> CanvasLayout:
    layout = getattr(source, "layout", source)  # BoundSchema and CanvasSchema carry one
    if not isinstance(layout, CanvasLayout):
        msg = f"SemanticConditioner needs a CanvasLayout, CanvasSchema or BoundSchema, got {type(source).__name__}"
        raise CanvasValidationError(msg)
    return layout


class SemanticConditioner(nn.Module):
    """Adds each region's projected semantic embedding to that region's tokens.

    For region ``r`` with frozen embedding ``e_r`` the conditioning vector is
    ``projection(e_r) + residual[r]``: the projection (``Linear(embed_dim, d_model)``, no
    bias) is shared by every region, so regions with equal embeddings (in this schema or
    in another one sharing the projection) get equal vectors; the per-region residual is
    learned and starts at zero. Regions without an embedding get no conditioning (their
    embedding row is zeros and their vector is held at zero), as do unassigned positions.

    Args:
        layout: a ``CanvasLayout`` (or a ``CanvasSchema`` / ``BoundSchema``, for its layout)
            whose ``RegionSpec.semantic_embedding`` values are read.
        d_model: token width (default: ``layout.d_model``).
        embed_dim: embedding size (default: the size of the layout's embeddings).
        projection: an existing ``nn.Linear(embed_dim, d_model)`` to share, e.g. another
            conditioner's ``projection`` (default: a new one).
        freeze_embeddings: keep the embeddings a frozen buffer (default); ``False`` makes
            them a learned parameter (the published option of that name).
        learn_residuals: learn the per-region residual (default); ``False`` holds it at zero.

    Attributes:
        embeddings: (R, embed_dim) frozen buffer, one row per region in layout order.
        has_embedding: (R,) bool buffer: which regions are conditioned.
        projection: the shared ``Linear(embed_dim, d_model, bias=False)``.
        residual: (R, d_model) learned, zero-initialised per-region residual.

    Raises:
        CanvasValidationError: no region has an embedding and ``embed_dim`` is not given,
            sizes disagree (message names the region), or ``projection`` has the wrong shape.

    Example::

        >>> bound = compile_schema(Robot(), T=4, d_model=32, embed_fn=hashing_embed)
        >>> cond = SemanticConditioner(bound.layout)
        >>> canvas = cond(bound.create_batch(2))  # (2, N, 32), each region shifted by its vector

    """

    def __init__(
        self,
        layout: CanvasLayout | CanvasSchema | HasLayout,
        d_model: int | None = None,
        embed_dim: int | None = None,
        projection: nn.Linear | None = None,
        *,
        freeze_embeddings: bool = True,
        learn_residuals: bool = True,
    ) -> None:
        super().__init__()
        layout = _layout_of(layout)
        d_model = layout.d_model if d_model is None else d_model
        check_positive_int(d_model, "SemanticConditioner: d_model")
        embedded = {n: s.semantic_embedding for n, s in layout.regions.items() if s.semantic_embedding is not None}
        if embed_dim is None:
            if not embedded:
                msg = (
                    "SemanticConditioner: no region of the layout has a semantic_embedding and embed_dim is not given; "
                    "compile with compile_schema(..., embed_fn=...) or set RegionSpec.semantic_embedding"
                )
                raise CanvasValidationError(msg)
            embed_dim = len(next(iter(embedded.values())))
        check_positive_int(embed_dim, "SemanticConditioner: embed_dim")
        for name, vec in embedded.items():
            if len(vec) != embed_dim:
                msg = (
                    f"SemanticConditioner: region {name!r} has a {len(vec)}-number embedding, "
                    f"expected embed_dim={embed_dim}"
                )
                raise CanvasValidationError(msg)
        if projection is None:
            projection = nn.Linear(embed_dim, d_model, bias=False)
        elif not isinstance(projection, nn.Linear) or (projection.in_features, projection.out_features) != (
            embed_dim,
            d_model,
        ):
            shape = (
                f"Linear({projection.in_features}, {projection.out_features})"
                if isinstance(projection, nn.Linear)
                else type(projection).__name__
            )
            msg = f"SemanticConditioner: projection must be nn.Linear({embed_dim}, {d_model}), got {shape}"
            raise CanvasValidationError(msg)
        self.layout = layout
        self.d_model = d_model
        self.embed_dim = embed_dim
        self.region_names: tuple[str, ...] = layout.region_names
        check_bool(freeze_embeddings, "SemanticConditioner: freeze_embeddings")
        check_bool(learn_residuals, "SemanticConditioner: learn_residuals")
        rows = [embedded.get(name, (0.0,) * embed_dim) for name in self.region_names]
        table = torch.tensor(rows, dtype=torch.float32).reshape(-1, embed_dim)
        if freeze_embeddings:
            self.register_buffer("embeddings", table)
        else:
            self.embeddings = nn.Parameter(table)
        self.register_buffer(
            "has_embedding", torch.tensor([n in embedded for n in self.region_names], dtype=torch.bool)
        )
        # (N,) region id per position; R marks unassigned positions
        self.register_buffer("region_ids", layout.position_region_ids.clone(), persistent=False)
        self.projection = projection
        self.residual = nn.Parameter(torch.zeros(len(self.region_names), d_model), requires_grad=learn_residuals)

    def conditioning(self, region: str | None = None) -> torch.Tensor:
        """(R, d_model) conditioning vectors in layout order, or (d_model,) for one ``region``."""
        vectors = self.projection(self.embeddings) + self.residual  # (R, d_model)
        vectors = vectors * self.has_embedding[:, None].to(vectors.dtype)
        if region is None:
            return vectors
        try:
            return vectors[self.region_names.index(region)]
        except ValueError:
            msg = f"SemanticConditioner: unknown region {region!r}; regions: {', '.join(self.region_names) or '(none)'}"
            raise CanvasValidationError(msg) from None

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        """``canvas`` (B, N, d_model) plus each position's region conditioning vector."""
        n = self.layout.num_positions
        if not isinstance(canvas, torch.Tensor) or canvas.dim() != 3 or canvas.shape[1:] != (n, self.d_model):
            shape = tuple(canvas.shape) if isinstance(canvas, torch.Tensor) else type(canvas).__name__
            msg = f"SemanticConditioner: canvas must have shape (B, {n}, {self.d_model}), got {shape}"
            raise CanvasValidationError(msg)
        vectors = self.conditioning()  # (R, d)
        table = torch.cat([vectors, vectors.new_zeros(1, self.d_model)])  # (R + 1, d): last row = unassigned
        return canvas + table[self.region_ids].to(canvas.dtype)  # (B, N, d) + (N, d)

    def extra_repr(self) -> str:
        """Region count, embedding size and width, for ``repr``."""
        conditioned = int(self.has_embedding.sum())
        return (
            f"regions={len(self.region_names)} (conditioned={conditioned}), "
            f"embed_dim={self.embed_dim}, d_model={self.d_model}"
        )
