"""``AttentionMask``: the views of one attention group's mask that attention types need.

A group is the set of connections that resolve to one attention type. Its queries are the
union of its src regions' positions and its keys the union of its dst regions' positions,
both ordered by (frame, region, position) so that temporal structure becomes block structure.
The mask is class-structured (it depends only on each side's (region, frame) class), so
every view is a gather from a small table:

* :meth:`~AttentionMask.dense_allowed` / :meth:`~AttentionMask.dense_weights` /
  :meth:`~AttentionMask.additive_bias`: (nq, nk) views, for reference kernels and small groups
  (refused above :data:`DENSE_MASK_BUDGET` bytes unless a larger ``max_bytes`` is passed);
* :meth:`~AttentionMask.class_view`: (Cq, Ck) weights between the classes present, for types
  that work on per-class summaries (linear, pooling, scans) and stay linear in N;
* :meth:`~AttentionMask.tiles`: the non-empty (query block, key block) tiles, bucketed for
  packed kernels;
* per-position coordinates (``q_coords``/``k_coords``: t, h, w, real time, slot).

What the kernels run on a device (the FlexAttention ``BlockMask`` and ``score_mod``, the dense
bias, the tile biases) is built once per (mask, device, dtype) and kept in the mask's one
:class:`ViewCache` (:attr:`AttentionMask.cache`); :meth:`AttentionMask.clear_cache` drops it.
Masks made by :meth:`AttentionMask.with_kernel` share that cache, so the blocks of a model,
which all run one compiled plan, build each view once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from canvas_engineering.compilation.partition_plan import PartitionPlan, build_partition_plan, reorder_partition_plan
from canvas_engineering.errors import CanvasValidationError

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = [
    "BLOCK_SIZES",
    "DENSE_MASK_BUDGET",
    "FLEX_BLOCK_SIZE",
    "KERNELS",
    "AttentionMask",
    "ClassView",
    "TileBucket",
    "TilePlan",
    "ViewCache",
    "block_mask_from_tiles",
    "check_dense_budget",
    "check_kernel",
]

#: kernel names: ``"auto"`` picks one per device and group size (see ``kernels.resolve_kernel``)
KERNELS: tuple[str, ...] = ("auto", "flex", "partitioned", "tiled", "dense")
#: power-of-two block sizes the tiled kernel considers (frame-aligned sizes are added per group)
BLOCK_SIZES = (32, 64, 128, 256)
#: FlexAttention's block size
FLEX_BLOCK_SIZE = 128
#: Largest dense (nq, nk) mask a dense view builds by default: 2 GiB. A float32 canvas mask of
#: more than ~23,000 positions (a bool one of ~46,000) is refused with a pointer to the block
#: views, which never build N x N; every dense view takes ``max_bytes=`` to raise the budget.
DENSE_MASK_BUDGET = 2 * 1024**3

_T = TypeVar("_T")
#: position-level extra mask ``(q_index, k_index) -> bool`` over group-local indices
ExtraMask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def check_kernel(kernel: object, where: str) -> str:
    """Return ``kernel`` if it is one of :data:`KERNELS`, else raise naming ``where``.

    Raises:
        CanvasValidationError: unknown kernel name (the message lists the valid ones).

    """
    if kernel not in KERNELS:
        msg = f"{where}: kernel {kernel!r} must be one of {', '.join(KERNELS)}"
        raise CanvasValidationError(msg)
    return str(kernel)


def check_dense_budget(
    rows: int, cols: int, element_size: int, where: str, max_bytes: int, instead: str
) -> None:
    """Refuse a dense ``(rows, cols)`` view of ``element_size`` bytes per entry over ``max_bytes``.

    Args:
        rows: query count.
        cols: key count.
        element_size: bytes per entry (1 for bool, 4 for float32).
        where: the method, for the message.
        max_bytes: the budget (default :data:`DENSE_MASK_BUDGET` at every dense view).
        instead: what to use instead, for the message.

    Raises:
        CanvasValidationError: the view would exceed the budget (the message gives both sizes,
            the budget and what to use instead), or ``max_bytes`` is not a positive integer.

    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        msg = f"{where}: max_bytes={max_bytes!r} must be a positive integer (bytes)"
        raise CanvasValidationError(msg)
    need = rows * cols * element_size
    if need > max_bytes:
        msg = (
            f"{where}: a dense ({rows:,} x {cols:,}) mask needs {need:,} bytes ({need / 1024**3:.3g} GiB), over "
            f"the dense mask budget max_bytes={max_bytes:,} (default DENSE_MASK_BUDGET = 2 GiB). "
            f"Use {instead}, or pass a larger max_bytes"
        )
        raise CanvasValidationError(msg)


#: what the messages of the group-level dense views point to
_GROUP_INSTEAD = (
    "the block plan (mask.tiles(block_size), mask.partitions(), mask.block_mask(device)) or "
    "a kernel that never builds it ('auto', 'partitioned', 'tiled', 'flex')"
)


class ViewCache:
    """Memo of what a mask builds on demand, one entry per key (view, block size, device, dtype, ...).

    Entries hold device tensors and closures (a ``BlockMask``'s ``mask_mod``), so copies and
    pickles of a mask start with an empty cache: every entry is rebuilt on first use.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, Any] = {}

    def get(self, key: Hashable, build: Callable[[], _T]) -> _T:
        """Return the entry under ``key``, built by ``build()`` on first request."""
        if key not in self._entries:
            self._entries[key] = build()
        return self._entries[key]

    def clear(self) -> None:
        """Drop every entry (e.g. to free a device's memory, or after editing the mask's tables)."""
        self._entries.clear()

    def keys(self) -> list[Hashable]:
        """Return the keys held, in insertion order."""
        return list(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))

    def __reduce__(self) -> tuple[type[ViewCache], tuple[()]]:
        return (ViewCache, ())

    def __repr__(self) -> str:
        return f"ViewCache({len(self)} entries)"


def _device_key(device: torch.device | str) -> str:
    """``"cpu"``, ``"cuda:0"``: a bare ``"cuda"`` names the current device, so one GPU has one key."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


@dataclass(frozen=True)
class ClassView:
    """Class-level mask: weights between the (region, frame) classes present in a group.

    Attributes:
        q_class: (nq,) index of each query's class into the rows of ``weights``.
        k_class: (nk,) index of each key's class into the columns of ``weights``.
        weights: (Cq, Ck) connection weight, 0 where blocked.
        q_time: (Cq,) real time of each query class; ``k_time``: (Ck,) of each key class.
        k_count: (Ck,) number of keys per key class.

    """

    q_class: torch.Tensor
    k_class: torch.Tensor
    weights: torch.Tensor
    q_time: torch.Tensor
    k_time: torch.Tensor
    k_count: torch.Tensor

    @property
    def allowed(self) -> torch.Tensor:
        """(Cq, Ck) bool."""
        return self.weights > 0


@dataclass(frozen=True, eq=False)
class TileBucket:
    """Query blocks that share a number of key blocks and a masking need.

    Attributes:
        q_blocks: (nb,) query block indices.
        k_blocks: (nb, K) key block indices of each query block's non-empty tiles.
        bias: additive bias (log weight, -inf blocked), or None when every tile is fully
            allowed with weight 1. ``(nb, bs, K * bs)``, or ``(nb, 1, K * bs)`` when every
            query row of a block has the same bias (blocks of one class), which broadcasts.
        row_valid: (nb, bs) or (nb, 1) bool, query rows with at least one allowed key (None: all).
        band: ``(q_start, k_starts)`` when the query blocks are consecutive and every window
            column is a consecutive run too (banded masks such as causal_temporal): the kernels
            then slice instead of gathering, which is much cheaper to differentiate.

    """

    q_blocks: torch.Tensor
    k_blocks: torch.Tensor
    bias: torch.Tensor | None
    row_valid: torch.Tensor | None
    band: tuple[int, tuple[int, ...]] | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> TileBucket:
        """Return the bucket with its tensors on ``device`` and its bias in ``dtype``."""
        return replace(
            self,
            q_blocks=self.q_blocks.to(device),
            k_blocks=self.k_blocks.to(device),
            bias=None if self.bias is None else self.bias.to(device, dtype),
            row_valid=None if self.row_valid is None else self.row_valid.to(device),
        )


def _band(q_blocks: torch.Tensor, k_blocks: torch.Tensor) -> tuple[int, tuple[int, ...]] | None:
    """:attr:`TileBucket.band` of a bucket (None when it is not banded)."""
    steps = torch.arange(q_blocks.numel())
    if not torch.equal(q_blocks, q_blocks[0] + steps):
        return None
    starts = k_blocks[0]
    if not torch.equal(k_blocks, starts[None, :] + steps[:, None]):
        return None
    return int(q_blocks[0]), tuple(int(s) for s in starts)


@dataclass(frozen=True)
class TilePlan:
    """Tile packing of a group's mask at one block size."""

    block_size: int
    n_q_blocks: int
    n_k_blocks: int
    buckets: tuple[TileBucket, ...]
    computed_pairs: int
    #: (n_q_blocks, n_k_blocks) bool: tile holds an allowed pair
    nonempty: torch.Tensor
    #: (n_q_blocks, n_k_blocks) bool: every pair of the whole tile allowed with weight 1
    clean: torch.Tensor
    #: (n_q_blocks,) where each query block's output sits in the concatenation of the
    #: buckets' outputs followed by one zero block (for blocks with no allowed key)
    assembly: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> TilePlan:
        """Return the plan with its buckets' tensors on ``device`` (biases in ``dtype``)."""
        return replace(
            self, buckets=tuple(b.to(device, dtype) for b in self.buckets), assembly=self.assembly.to(device)
        )


def block_mask_from_tiles(
    partial: torch.Tensor,
    full: torch.Tensor,
    block_size: int,
    mask_mod: Callable[..., torch.Tensor],
    seq_lengths: tuple[int, int],
    device: torch.device | str,
) -> BlockMask:
    """Build a FlexAttention ``BlockMask`` from (n_q_blocks, n_k_blocks) tile matrices.

    Args:
        partial: tiles that hold allowed and blocked pairs (``mask_mod`` decides per pair).
        full: tiles whose every pair is allowed (``mask_mod`` is skipped there).
        block_size: tile side.
        mask_mod: FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``.
        seq_lengths: ``(nq, nk)``.
        device: where the block tables live.

    """
    from torch.nn.attention.flex_attention import BlockMask

    def as_blocks(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = tiles.sum(-1).to(torch.int32)
        idx = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num[None, None].to(device), idx[None, None].to(device)

    kv_num, kv_idx = as_blocks(partial)
    full_num, full_idx = as_blocks(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=seq_lengths
    )


def _check_order(order: torch.Tensor, n: int, name: str) -> torch.Tensor:
    order = torch.as_tensor(order, dtype=torch.long)
    if order.shape != (n,) or not torch.equal(order.sort().values, torch.arange(n)):
        msg = f"AttentionMask.reordered: {name} must be a permutation of the {n} rows"
        raise CanvasValidationError(msg)
    return order


class AttentionMask:
    """The mask of one attention group (see module docstring).

    Args:
        class_table: (C, C) float weight table of the group (0 = blocked).
        q_positions: (nq,) canvas positions of the queries, in group order.
        k_positions: (nk,) canvas positions of the keys, in group order.
        position_classes: (N,) class of every canvas position.
        coords: (N, 5) long per position: t, h, w, real time, slot (index within its region frame).
        kernel: preferred kernel, ``"auto" | "flex" | "tiled" | "dense"``.

    Attributes:
        cache: the :class:`ViewCache` holding every view built on demand (tile plans, the
            chosen block size, and per device and dtype the ``BlockMask``, ``score_mod``,
            dense bias and tile biases). Shared with the masks :meth:`with_kernel` returns.

    """

    def __init__(
        self,
        class_table: torch.Tensor,
        q_positions: torch.Tensor,
        k_positions: torch.Tensor,
        position_classes: torch.Tensor,
        coords: torch.Tensor,
        kernel: str = "auto",
    ) -> None:
        self.class_table = class_table
        self.q_positions = q_positions
        self.k_positions = k_positions
        self.q_classes = position_classes[q_positions]
        self.k_classes = position_classes[k_positions]
        self.q_coords = coords[q_positions]
        self.k_coords = coords[k_positions]
        self.kernel = kernel
        self.cache = ViewCache()

    def with_kernel(self, kernel: str) -> AttentionMask:
        """Return the same mask preferring ``kernel``; it shares this mask's tensors and :attr:`cache`.

        Raises:
            CanvasValidationError: unknown kernel name.

        """
        view = copy.copy(self)  # shallow: tables, positions and the cache are shared
        view.kernel = check_kernel(kernel, "AttentionMask.with_kernel")
        return view

    def clear_cache(self) -> None:
        """Drop every view built on demand (shared with :meth:`with_kernel` masks); rebuilt on next use."""
        self.cache.clear()

    @property
    def num_queries(self) -> int:
        """Nq."""
        return self.q_positions.numel()

    @property
    def num_keys(self) -> int:
        """Nk."""
        return self.k_positions.numel()

    @cached_property
    def num_allowed_pairs(self) -> int:
        """Allowed (query, key) pairs, from class counts."""
        c = self.class_table.shape[0]
        qc = torch.bincount(self.q_classes, minlength=c).double()
        kc = torch.bincount(self.k_classes, minlength=c).double()
        return int(qc @ (self.class_table > 0).double() @ kc)

    # -- dense views ---------------------------------------------------------------

    def dense_weights(self, max_bytes: int = DENSE_MASK_BUDGET) -> torch.Tensor:
        """(nq, nk) weight, 0 where blocked (built on each call; see :meth:`dense_bias` for the cached view).

        Raises:
            CanvasValidationError: the float32 view would exceed ``max_bytes`` (default 2 GiB).

        """
        check_dense_budget(
            self.num_queries, self.num_keys, 4, "AttentionMask.dense_weights", max_bytes, _GROUP_INSTEAD
        )
        return self.class_table.index_select(0, self.q_classes).index_select(1, self.k_classes)

    def dense_allowed(self, max_bytes: int = DENSE_MASK_BUDGET) -> torch.Tensor:
        """(nq, nk) bool (built through the float32 weights, so ``max_bytes`` counts 4 bytes per pair)."""
        return self.dense_weights(max_bytes) > 0

    def additive_bias(self, max_bytes: int = DENSE_MASK_BUDGET) -> torch.Tensor:
        """(nq, nk) float: log weight where allowed, -inf where blocked."""
        return self.dense_weights(max_bytes).log()

    def dense_bias(
        self,
        device: torch.device | str,
        dtype: torch.dtype,
        extra_mask: ExtraMask = None,
        max_bytes: int = DENSE_MASK_BUDGET,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bias (nq, nk), row_valid (nq,))`` on ``device``, cached per (device, dtype, extra mask).

        ``bias`` is the log weight, -inf where blocked, and 0 on rows with no allowed key
        (any finite row keeps softmax finite; ``row_valid`` (bool) marks the rows whose
        output counts). ``extra_mask(q_index, k_index) -> bool`` is ANDed with the class mask.

        Raises:
            CanvasValidationError: the view would exceed ``max_bytes`` (default 2 GiB; the
                kernel ``"dense"`` builds it).

        """
        check_dense_budget(
            self.num_queries, self.num_keys, 4, "AttentionMask.dense_bias (kernel 'dense')", max_bytes, _GROUP_INSTEAD
        )

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            weights = self.dense_weights(max_bytes)
            if extra_mask is not None:
                q_idx, k_idx = torch.arange(self.num_queries)[:, None], torch.arange(self.num_keys)[None, :]
                weights = weights * extra_mask(q_idx, k_idx)
            valid = (weights > 0).any(1)
            bias = weights.log()
            bias[~valid] = 0.0
            return bias.to(device, dtype), valid.to(device)

        return self.cache.get(("dense_bias", _device_key(device), dtype, extra_mask), build)

    def rows_reading(self, keys: torch.Tensor, extra_mask: ExtraMask = None) -> torch.Tensor:
        """Query rows allowed to read at least one flagged key: ``keys`` (..., nk) bool -> (..., nq) bool.

        What a non-finite key or value reaches: the kernels mark exactly these rows. From the
        class structure (flagged keys counted per key class, one (C, C) product, a gather per
        query), so O(nq + nk + C**2) per leading index; with ``extra_mask`` (position-level),
        ANDed pair by pair for the flagged keys only, in chunks of bounded memory.

        Raises:
            CanvasValidationError: ``keys``'s last dimension is not ``nk``.

        """
        nq, nk = self.num_queries, self.num_keys
        if keys.dim() < 1 or keys.shape[-1] != nk:
            msg = f"AttentionMask.rows_reading: keys of shape {tuple(keys.shape)} must end in nk={nk}"
            raise CanvasValidationError(msg)
        lead = keys.shape[:-1]
        flat = keys.reshape(-1, nk).to("cpu", torch.bool)
        allowed = self.class_table > 0
        if extra_mask is None:
            per_class = torch.zeros(flat.shape[0], allowed.shape[1]).index_add_(1, self.k_classes, flat.float())
            reads = (per_class @ allowed.T.float()) > 0  # (M, C): the query class reads a flagged key
            out = reads[:, self.q_classes]
        else:
            out = torch.zeros(flat.shape[0], nq, dtype=torch.bool)
            q_idx = torch.arange(nq)[:, None]
            cols = flat.any(0).nonzero().squeeze(1)
            for part in cols.split(max(1, (1 << 22) // max(nq, 1))):  # chunks of flagged keys, not positions
                ok = allowed[self.q_classes[:, None], self.k_classes[part][None, :]]
                ok = ok & extra_mask(q_idx, part[None, :]).to(torch.bool)
                out |= (flat[:, part].float() @ ok.float().T) > 0
        return out.reshape(*lead, nq).to(keys.device)

    @cached_property
    def row_has_key(self) -> torch.Tensor:
        """(nq,) bool: the query may attend at least one key."""
        present = torch.zeros(self.class_table.shape[0], dtype=torch.bool)
        present[self.k_classes] = True
        return (self.class_table[:, present] > 0).any(1)[self.q_classes]

    # -- class view ------------------------------------------------------------------

    @cached_property
    def _class_view(self) -> ClassView:
        q_used, q_class = torch.unique(self.q_classes, return_inverse=True)
        k_used, k_class = torch.unique(self.k_classes, return_inverse=True)
        weights = self.class_table[q_used][:, k_used]
        q_time = torch.zeros(len(q_used), dtype=torch.long)
        q_time.scatter_reduce_(0, q_class, self.q_coords[:, 3], "amax", include_self=False)  # not the beta index_reduce
        k_time = torch.zeros(len(k_used), dtype=torch.long)
        k_time.scatter_reduce_(0, k_class, self.k_coords[:, 3], "amax", include_self=False)
        k_count = torch.bincount(k_class, minlength=len(k_used))
        return ClassView(q_class, k_class, weights, q_time, k_time, k_count)

    def class_view(self, device: torch.device | str | None = None) -> ClassView:
        """Return the class-level mask (cached; moved to ``device`` if given)."""
        view = self._class_view
        if device is None or torch.device(device) == view.weights.device:
            return view
        return self.cache.get(
            ("class_view", _device_key(device)),
            lambda: ClassView(*(getattr(view, f).to(device) for f in view.__dataclass_fields__)),
        )

    # -- flex views ------------------------------------------------------------------

    def _padded_classes(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(table (C+1, C+1), q_cls, k_cls)`` on ``device``, padded to whole flex blocks.

        The padding is an extra all-blocked class, so out-of-range indices read "blocked".
        """

        def build() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            c, bs = self.class_table.shape[0], FLEX_BLOCK_SIZE
            table = torch.zeros(c + 1, c + 1)
            table[:c, :c] = self.class_table
            q_pad = -self.num_queries % bs
            k_pad = -self.num_keys % bs
            q_cls = torch.cat([self.q_classes, torch.full((q_pad,), c)])
            k_cls = torch.cat([self.k_classes, torch.full((k_pad,), c)])
            return table.to(device), q_cls.to(device), k_cls.to(device)

        return self.cache.get(("padded_classes", _device_key(device)), build)

    def block_mask(self, device: torch.device | str, extra_mask: ExtraMask = None) -> BlockMask:
        """Return the FlexAttention ``BlockMask`` of the group on ``device`` (cached per device and extra mask).

        Its tiles come from :meth:`tiles` at :data:`FLEX_BLOCK_SIZE` (tiles allowed with weight 1
        are "full" and skip ``mask_mod``); ``mask_mod`` gathers from the class table, so partial
        tiles are exact. Never builds an (nq, nk) tensor.
        """

        def build() -> BlockMask:
            nq, nk = self.num_queries, self.num_keys
            table, q_cls, k_cls = self._padded_classes(device)
            allowed = table > 0

            def mask_mod(b, h, q_idx, kv_idx):
                ok = allowed[q_cls[q_idx], k_cls[kv_idx]]
                if extra_mask is not None:
                    ok = ok & extra_mask(q_idx.clamp(max=nq - 1), kv_idx.clamp(max=nk - 1))
                return ok

            plan = self.tiles(FLEX_BLOCK_SIZE)
            full = plan.clean if extra_mask is None else torch.zeros_like(plan.clean)
            partial = plan.nonempty & ~full
            return block_mask_from_tiles(partial, full, FLEX_BLOCK_SIZE, mask_mod, (nq, nk), device)

        return self.cache.get(("block_mask", _device_key(device), extra_mask), build)

    def score_mod(self, device: torch.device | str, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
        """FlexAttention ``score_mod`` adding the log connection weight, on ``device`` in ``dtype`` (cached)."""

        def build() -> Callable[..., torch.Tensor]:
            table, q_cls, k_cls = self._padded_classes(device)
            log_w = table.clamp(min=1e-30).log().to(dtype)

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + log_w[q_cls[q_idx], k_cls[kv_idx]]

            return score_mod

        return self.cache.get(("score_mod", _device_key(device), dtype), build)

    # -- tiles ---------------------------------------------------------------------

    def choose_block_size(self) -> int:
        """Return the candidate block size with the least estimated packed cost (cached).

        Cost: computed pairs (x1.5 in masked tiles, which SDPA runs slower) plus a fixed
        overhead per tile, so equal work prefers fewer, larger tiles.
        """

        def build() -> int:
            costs = {}
            for bs in self._candidate_block_sizes():
                nonempty, clean = self._tile_structure(bs)
                counts = nonempty.sum(1).float()
                masked = ~(clean | ~nonempty).all(1)
                work = bs * bs * torch.where(masked, 1.5, 1.0)
                costs[bs] = float((counts * (work + 16384)).sum())
            return min(costs, key=costs.get)

        return self.cache.get("block_size", build)

    def _candidate_block_sizes(self) -> list[int]:
        """Powers of two, plus divisors of the most common per-frame query count.

        Divisors give frame-aligned tiles; "most common" so that a trailing segment of another
        size, such as CogVideoX's text tokens after the video frames, keeps the frames aligned.
        """
        sizes = set(BLOCK_SIZES)
        per_frame = torch.bincount(self.q_coords[:, 0])
        per_frame = per_frame[per_frame > 0]
        if len(per_frame):
            frame = int(torch.mode(per_frame).values)
            sizes |= {frame // k for k in range(1, 9) if frame % k == 0 and 32 <= frame // k <= 640}
        return sorted(sizes)

    def tiles(self, block_size: int, extra_mask: ExtraMask = None) -> TilePlan:
        """Bucketed non-empty tiles at ``block_size``, on the CPU (cached per block size and extra mask).

        Args:
            block_size: tile side.
            extra_mask: optional callable ``(q_index (..., bs), k_index (..., Kbs)) -> bool`` over
                group-local indices, ANDed with the class mask (forces masked buckets).

        """
        return self.cache.get(("tiles", block_size, extra_mask), lambda: self._build_tiles(block_size, extra_mask))

    def partitions(self) -> PartitionPlan:
        """Return the queries partitioned by what they read (see :mod:`.partition_plan`), on the CPU (cached)."""
        return self.cache.get(
            "partitions", lambda: build_partition_plan(self.class_table, self.q_classes, self.k_classes)
        )

    def device_partitions(self, device: torch.device | str, dtype: torch.dtype) -> PartitionPlan:
        """:meth:`partitions` with its tensors on ``device`` and biases in ``dtype`` (cached)."""
        return self.cache.get(
            ("device_partitions", _device_key(device), dtype), lambda: self.partitions().to(device, dtype)
        )

    def reordered(self, q_order: torch.Tensor, k_order: torch.Tensor | None = None) -> AttentionMask:
        """Return the mask with its query rows permuted by ``q_order`` (and key rows by ``k_order``).

        The new mask starts with an empty cache.

        Raises:
            CanvasValidationError: an order that is not a permutation of the rows.

        """
        q_order = _check_order(q_order, self.num_queries, "q_order")
        k_order = torch.arange(self.num_keys) if k_order is None else _check_order(k_order, self.num_keys, "k_order")
        view = copy.copy(self)
        view.q_positions, view.k_positions = self.q_positions[q_order], self.k_positions[k_order]
        view.q_classes, view.k_classes = self.q_classes[q_order], self.k_classes[k_order]
        view.q_coords, view.k_coords = self.q_coords[q_order], self.k_coords[k_order]
        view.cache = ViewCache()
        for name in ("num_allowed_pairs", "row_has_key", "_class_view"):
            view.__dict__.pop(name, None)
        if "partitions" in self.cache and torch.equal(q_order, self.partitions().order):
            # the compiler's reordering: derive the plan instead of grouping the classes again
            plan = reorder_partition_plan(self.partitions(), k_order)
            view.cache.get("partitions", lambda: plan)
        return view

    def device_tiles(
        self, block_size: int, device: torch.device | str, dtype: torch.dtype, extra_mask: ExtraMask = None
    ) -> TilePlan:
        """:meth:`tiles` with the buckets' tensors on ``device`` and biases in ``dtype`` (cached)."""
        plan = self.tiles(block_size, extra_mask)
        if torch.device(device).type == "cpu" and all(b.bias is None or b.bias.dtype == dtype for b in plan.buckets):
            return plan
        key = ("device_tiles", block_size, extra_mask, _device_key(device), dtype)
        return self.cache.get(key, lambda: plan.to(device, dtype))

    def _tile_structure(self, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(nonempty, clean) (n_q_blocks, n_k_blocks) bool tiles from per-block class histograms."""
        c = self.class_table.shape[0]
        nq, nk = self.num_queries, self.num_keys
        nqb, nkb = -(-nq // bs), -(-nk // bs)
        pq = torch.zeros(nqb, c)
        pq[torch.arange(nq) // bs, self.q_classes] = 1.0
        pk = torch.zeros(nkb, c)
        pk[torch.arange(nk) // bs, self.k_classes] = 1.0
        allowed = (self.class_table > 0).float()
        nonempty = (pq @ allowed @ pk.T) > 0  # (nqb, nkb)
        not_one = (self.class_table != 1.0).float()  # blocked or weighted
        clean = (pq @ not_one @ pk.T) == 0  # every pair allowed with weight 1
        if nq % bs:
            clean[-1, :] = False
        if nk % bs:
            clean[:, -1] = False
        return nonempty, clean

    def _build_tiles(self, bs: int, extra_mask: ExtraMask) -> TilePlan:
        nqb, nkb = -(-self.num_queries // bs), -(-self.num_keys // bs)
        nonempty, clean = self._tile_structure(bs)
        counts = nonempty.sum(1)
        # Keys of each query block, non-empty first (stable keeps block order).
        order = torch.argsort((~nonempty).to(torch.int8), dim=1, stable=True)
        needs_mask = ~(clean | ~nonempty).all(1) | (extra_mask is not None)
        buckets = []
        computed = 0
        for k_count in counts.unique().tolist():
            if k_count == 0:
                continue
            for masked in (False, True):
                sel = ((counts == k_count) & (needs_mask == masked)).nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                k_blocks = order[sel, :k_count]
                computed += sel.numel() * k_count * bs * bs
                bias = row_valid = None
                if masked:
                    bias, row_valid = self._bucket_bias(sel, k_blocks, bs, extra_mask)
                buckets.append(TileBucket(sel, k_blocks, bias, row_valid, _band(sel, k_blocks)))
        order = torch.cat([b.q_blocks for b in buckets]) if buckets else torch.zeros(0, dtype=torch.long)
        assembly = torch.full((nqb,), len(order), dtype=torch.long)
        assembly[order] = torch.arange(len(order))
        return TilePlan(bs, nqb, nkb, tuple(buckets), computed, nonempty, clean & nonempty, assembly)

    def _bucket_bias(
        self, q_blocks: torch.Tensor, k_blocks: torch.Tensor, bs: int, extra_mask: ExtraMask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bias, row_valid)`` of a masked bucket; one row per block when its real rows share a class."""
        c = self.class_table.shape[0]
        pad_class = c  # an all-blocked class for padding rows/columns
        table = torch.zeros(c + 1, c + 1)
        table[:c, :c] = self.class_table
        q_cls = torch.cat([self.q_classes, torch.full((bs,), pad_class)])
        k_cls = torch.cat([self.k_classes, torch.full((bs,), pad_class)])
        q_idx = (q_blocks[:, None] * bs + torch.arange(bs)[None, :]).clamp(max=self.num_queries)  # (nb, bs)
        k_idx = (k_blocks[:, :, None] * bs + torch.arange(bs)[None, None, :]).reshape(len(q_blocks), -1)
        k_idx = k_idx.clamp(max=self.num_keys)  # (nb, K*bs); padding maps to the pad class
        rows = q_cls[q_idx]  # (nb, bs)
        # Padding rows (index nq) are cut from the output, so they need not match their block.
        one_class = bool(((rows == rows[:, :1]) | (q_idx == self.num_queries)).all())
        if one_class and extra_mask is None:
            # Every row of a block has the same bias: keep one, SDPA broadcasts it (bs x less memory).
            rows = rows[:, :1]
        weights = table[rows[:, :, None], k_cls[k_idx][:, None, :]]  # (nb, bs or 1, K*bs)
        if extra_mask is not None:
            q_last, k_last = self.num_queries - 1, self.num_keys - 1
            ok = extra_mask(q_idx.clamp(max=q_last)[:, :, None], k_idx.clamp(max=k_last)[:, None, :])
            weights = weights * ok
        row_valid = (weights > 0).any(-1)
        bias = weights.log()
        bias[~row_valid] = 0.0  # fully blocked rows: finite softmax, output zeroed by row_valid
        return bias, row_valid
