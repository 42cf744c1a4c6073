"""``AttentionMask``: the views of one attention group's mask that attention types need.

A group is the set of connections that resolve to one attention type. Its queries are the
union of its src regions' positions and its keys the union of its dst regions' positions,
both ordered by (frame, region, position) so that temporal structure becomes block structure.
The mask is class-structured (it depends only on each side's (region, frame) class), so
every view is a gather from a small table:

* :meth:`dense_allowed` / :meth:`dense_weights` / :meth:`additive_bias`: (nq, nk) views,
  for reference kernels and small groups;
* :meth:`class_view`: (Cq, Ck) weights between the classes present, for types that work on
  per-class summaries (linear, pooling, scans) and stay linear in N;
* :meth:`tiles`: the non-empty (query block, key block) tiles, bucketed for packed kernels;
* per-position coordinates (``q_coords``/``k_coords``: t, h, w, real time, slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["AttentionMask", "ClassView", "TileBucket", "TilePlan"]

BLOCK_SIZES = (32, 64, 128, 256)


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
        bias: (nb, bs, K * bs) additive bias (log weight, -inf blocked), or None when every
            tile is fully allowed with weight 1.
        row_valid: (nb, bs) bool, query rows with at least one allowed key (None: all).
    """

    q_blocks: torch.Tensor
    k_blocks: torch.Tensor
    bias: torch.Tensor | None
    row_valid: torch.Tensor | None

    @cached_property
    def band(self) -> tuple[int, tuple[int, ...]] | None:
        """``(q_start, k_starts)`` when the query blocks are consecutive and every window
        column is a consecutive run too (banded masks such as causal_temporal): the kernels
        then slice instead of gathering, which is much cheaper to differentiate."""
        nb = self.q_blocks.numel()
        steps = torch.arange(nb)
        if not torch.equal(self.q_blocks, self.q_blocks[0] + steps):
            return None
        starts = self.k_blocks[0]
        if not torch.equal(self.k_blocks, starts[None, :] + steps[:, None]):
            return None
        return int(self.q_blocks[0]), tuple(int(s) for s in starts)


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


class AttentionMask:
    """The mask of one attention group (see module docstring).

    Args:
        class_table: (C, C) float weight table of the group (0 = blocked).
        q_positions: (nq,) canvas positions of the queries, in group order.
        k_positions: (nk,) canvas positions of the keys, in group order.
        position_classes: (N,) class of every canvas position.
        coords: (N, 5) long per position: t, h, w, real time, slot (index within its region frame).
        kernel: preferred kernel, ``"auto" | "flex" | "tiled" | "dense"``.
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
        self._tiles: dict[tuple[int, object], TilePlan] = {}
        self._best_block_size: int | None = None
        self._device_cache: dict[tuple, object] = {}

    @property
    def num_queries(self) -> int:
        """nq."""
        return self.q_positions.numel()

    @property
    def num_keys(self) -> int:
        """nk."""
        return self.k_positions.numel()

    @cached_property
    def num_allowed_pairs(self) -> int:
        """Allowed (query, key) pairs, from class counts."""
        c = self.class_table.shape[0]
        qc = torch.bincount(self.q_classes, minlength=c).double()
        kc = torch.bincount(self.k_classes, minlength=c).double()
        return int(qc @ (self.class_table > 0).double() @ kc)

    # -- dense views ---------------------------------------------------------------

    def dense_weights(self) -> torch.Tensor:
        """(nq, nk) weight, 0 where blocked."""
        return self.class_table.index_select(0, self.q_classes).index_select(1, self.k_classes)

    def dense_allowed(self) -> torch.Tensor:
        """(nq, nk) bool."""
        return self.dense_weights() > 0

    def additive_bias(self) -> torch.Tensor:
        """(nq, nk) float: log weight where allowed, -inf where blocked."""
        return self.dense_weights().log()

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
        q_time = torch.zeros(len(q_used), dtype=torch.long).index_reduce_(0, q_class, self.q_coords[:, 3], "amax", include_self=False)
        k_time = torch.zeros(len(k_used), dtype=torch.long).index_reduce_(0, k_class, self.k_coords[:, 3], "amax", include_self=False)
        k_count = torch.bincount(k_class, minlength=len(k_used))
        return ClassView(q_class, k_class, weights, q_time, k_time, k_count)

    def class_view(self, device: torch.device | str | None = None) -> ClassView:
        """The class-level mask (cached; moved to ``device`` if given)."""
        view = self._class_view
        if device is None or torch.device(device) == view.weights.device:
            return view
        key = ("class_view", str(device))
        if key not in self._device_cache:
            self._device_cache[key] = ClassView(*(getattr(view, f).to(device) for f in view.__dataclass_fields__))
        return self._device_cache[key]  # type: ignore[return-value]

    # -- tiles ---------------------------------------------------------------------

    def choose_block_size(self) -> int:
        """The candidate block size with the least estimated packed cost (cached).

        Cost: computed pairs (x1.5 in masked tiles, which SDPA runs slower) plus a fixed
        overhead per tile, so equal work prefers fewer, larger tiles.
        """
        if self._best_block_size is None:
            costs = {}
            for bs in self._candidate_block_sizes():
                nonempty, clean = self._tile_structure(bs)
                counts = nonempty.sum(1).float()
                masked = ~(clean | ~nonempty).all(1)
                work = bs * bs * torch.where(masked, 1.5, 1.0)
                costs[bs] = float((counts * (work + 16384)).sum())
            self._best_block_size = min(costs, key=costs.get)
        return self._best_block_size

    def _candidate_block_sizes(self) -> list[int]:
        """Powers of two, plus divisors of the per-frame query count (frame-aligned tiles)."""
        sizes = set(BLOCK_SIZES)
        per_frame = torch.bincount(self.q_coords[:, 0])
        per_frame = per_frame[per_frame > 0]
        if len(per_frame) and bool((per_frame == per_frame[0]).all()):
            frame = int(per_frame[0])
            sizes |= {frame // k for k in range(1, 9) if frame % k == 0 and 32 <= frame // k <= 640}
        return sorted(sizes)

    def tiles(self, block_size: int, extra_mask: object = None) -> TilePlan:
        """Bucketed non-empty tiles at ``block_size`` (cached per block size and extra mask).

        Args:
            extra_mask: optional callable ``(q_index (..., bs), k_index (..., Kbs)) -> bool`` over
                group-local indices, ANDed with the class mask (forces masked buckets).
        """
        key = (block_size, extra_mask)
        if key not in self._tiles:
            self._tiles[key] = self._build_tiles(block_size, extra_mask)
        return self._tiles[key]

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
        not_one = ((self.class_table != 1.0)).float()  # blocked or weighted
        clean = (pq @ not_one @ pk.T) == 0  # every pair allowed with weight 1
        if nq % bs:
            clean[-1, :] = False
        if nk % bs:
            clean[:, -1] = False
        return nonempty, clean

    def _build_tiles(self, bs: int, extra_mask: object) -> TilePlan:
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
                buckets.append(TileBucket(sel, k_blocks, bias, row_valid))
        order = torch.cat([b.q_blocks for b in buckets]) if buckets else torch.zeros(0, dtype=torch.long)
        assembly = torch.full((nqb,), len(order), dtype=torch.long)
        assembly[order] = torch.arange(len(order))
        return TilePlan(bs, nqb, nkb, tuple(buckets), computed, nonempty, clean & nonempty, assembly)

    def _bucket_bias(
        self, q_blocks: torch.Tensor, k_blocks: torch.Tensor, bs: int, extra_mask: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.class_table.shape[0]
        pad_class = c  # an all-blocked class for padding rows/columns
        table = torch.zeros(c + 1, c + 1)
        table[:c, :c] = self.class_table
        q_cls = torch.cat([self.q_classes, torch.full((bs,), pad_class)])
        k_cls = torch.cat([self.k_classes, torch.full((bs,), pad_class)])
        q_idx = (q_blocks[:, None] * bs + torch.arange(bs)[None, :]).clamp(max=self.num_queries)  # (nb, bs)
        k_idx = (k_blocks[:, :, None] * bs + torch.arange(bs)[None, None, :]).reshape(len(q_blocks), -1)
        k_idx = k_idx.clamp(max=self.num_keys)  # (nb, K*bs); padding maps to the pad class
        weights = table[q_cls[q_idx][:, :, None], k_cls[k_idx][:, None, :]]  # (nb, bs, K*bs)
        if extra_mask is not None:
            ok = extra_mask(q_idx.clamp(max=self.num_queries - 1)[:, :, None], k_idx.clamp(max=self.num_keys - 1)[:, None, :])
            weights = weights * ok
        row_valid = (weights > 0).any(-1)
        bias = weights.log()
        bias[~row_valid] = 0.0  # fully blocked rows: finite softmax, output zeroed by row_valid
        return bias, row_valid
