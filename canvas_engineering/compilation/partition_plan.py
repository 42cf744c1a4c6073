"""``PartitionPlan``: an attention group's queries partitioned by what they read.

The mask is class-structured: every query of one class reads the same keys with the same
weights. Queries are therefore grouped into *partitions*, classes whose rows are identical
once each row is divided by its largest weight (softmax ignores a constant log-weight, so a
row of one weight needs no bias at all); each partition then runs as dense attention over
exactly the keys it reads. Partitions whose queries are few and whose key sets mostly
overlap (a cell reading the whole video, one class per frame) are merged greedily when a
cost model says the shared key gather saves more than the masked pairs cost. What the
queries of a partition read never depends on another partition, so a wide reader never
drags a whole-sequence key window into a block of ordinary queries, which is what a block
tiling in (frame, region) order does.

Everything is computed from the (classes x classes) table and per-position class ids:
nothing loops over positions; the loops run over classes and partitions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = [
    "BATCH_PAIRS",
    "PartitionBatch",
    "PartitionPlan",
    "QueryPartition",
    "build_partition_plan",
    "reorder_partition_plan",
]

#: partitions with fewer (query, key) pairs than this run batched with others of their shape
BATCH_PAIRS = 1 << 14
#: cost model, in units of one computed (query, key) pair: a masked pair (bias read) costs
#: 1 + MASKED, a gathered key row KEY_ROW, a separate partition CALL
_MASKED = 0.5
_KEY_ROW = 4.0
_CALL = 2000.0


@dataclass(frozen=True, eq=False)
class QueryPartition:
    """Queries that read one key set, run as one dense attention.

    Attributes:
        q_index: (nq,) query rows (group order), ascending.
        q_span: ``(start, stop)`` when ``q_index`` is that contiguous range (then sliced).
        k_index: (nk,) key rows read, ascending.
        k_runs: ``k_index`` as ascending contiguous ``(start, stop)`` runs (one run: a slice).
        bias: None (every pair allowed with one weight), (1, nk) log relative weights shared
            by every query, or (nq, nk) per query with -inf where blocked.

    """

    q_index: torch.Tensor
    q_span: tuple[int, int] | None
    k_index: torch.Tensor
    k_runs: tuple[tuple[int, int], ...]
    bias: torch.Tensor | None

    @property
    def pairs(self) -> int:
        """Computed (query, key) pairs."""
        return self.q_index.numel() * self.k_index.numel()

    def to(self, device: torch.device | str, dtype: torch.dtype) -> QueryPartition:
        """Return the partition with its tensors on ``device`` (bias in ``dtype``)."""
        bias = None if self.bias is None else self.bias.to(device, dtype)
        return replace(self, q_index=self.q_index.to(device), k_index=self.k_index.to(device), bias=bias)


@dataclass(frozen=True, eq=False)
class PartitionBatch:
    """Small partitions of one shape, run as one batched attention call.

    Attributes:
        q_index: (P, nq) query rows per partition.
        k_index: (P, nk) key rows per partition.
        bias: None, or (P, 1 or nq, nk).

    """

    q_index: torch.Tensor
    k_index: torch.Tensor
    bias: torch.Tensor | None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PartitionBatch:
        """Return the batch with its tensors on ``device`` (bias in ``dtype``)."""
        bias = None if self.bias is None else self.bias.to(device, dtype)
        return replace(self, q_index=self.q_index.to(device), k_index=self.k_index.to(device), bias=bias)


@dataclass(frozen=True, eq=False)
class PartitionPlan:
    """The partitions of a group's queries (see module docstring).

    Attributes:
        singles: partitions run one call each (large ones).
        batches: small partitions batched by shape.
        order: (nq,) query rows sorted so that every partition is a contiguous run (partitions
            by first query, then rows without any key): a group ordered this way slices instead
            of gathering.
        num_queries: nq; ``num_keys``: nk.
        computed_pairs: pairs the plan computes (allowed pairs plus masked ones of merged partitions).
        covers_all: every query row is in a partition (no row without an allowed key).

    """

    singles: tuple[QueryPartition, ...]
    batches: tuple[PartitionBatch, ...]
    order: torch.Tensor
    num_queries: int
    num_keys: int
    computed_pairs: int
    covers_all: bool

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PartitionPlan:
        """Return the plan with its tensors on ``device`` (biases in ``dtype``)."""
        return replace(
            self,
            singles=tuple(p.to(device, dtype) for p in self.singles),
            batches=tuple(b.to(device, dtype) for b in self.batches),
        )


def _span(index: torch.Tensor) -> tuple[int, int] | None:
    start = int(index[0])
    stop = int(index[-1]) + 1
    return (start, stop) if stop - start == index.numel() else None


def _runs(index: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Ascending ``index`` as contiguous ``(start, stop)`` runs."""
    breaks = (index.diff() != 1).nonzero().squeeze(1) + 1
    starts = torch.cat([index[:1], index[breaks]]).tolist()
    stops = torch.cat([index[breaks - 1], index[-1:]]).add(1).tolist()
    return tuple(zip(starts, stops, strict=True))


def _cost(nq: torch.Tensor, nk: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    return nq * nk * (1.0 + _MASKED * masked) + _KEY_ROW * nk + _CALL


def _merge_groups(
    reads: torch.Tensor, distinct: torch.Tensor, nq: torch.Tensor, k_count: torch.Tensor
) -> list[list[int]]:
    """Greedy agglomerative merge of row groups while the cost model says it saves.

    Args:
        reads: (G, Ck) bool key classes each group reads.
        distinct: (G,) bool, the group already holds different rows (needs a per-query bias).
        nq: (G,) queries per group.
        k_count: (Ck,) keys per key class.

    Returns:
        The members (indices into the G groups) of each merged group.

    """
    members = [[g] for g in range(reads.shape[0])]
    reads = reads.double()
    k_count = k_count.double()
    nq = nq.double()
    masked = distinct.double()
    alive = torch.ones(len(members), dtype=torch.bool)
    upper = torch.ones(len(members), len(members), dtype=torch.bool).triu(1)
    nk = reads @ k_count
    cost = _cost(nq, nk, masked)
    shared = (reads * k_count) @ reads.T  # keys read by both
    while int(alive.sum()) > 1:
        union = nk[:, None] + nk[None, :] - shared
        saving = cost[:, None] + cost[None, :] - _cost(nq[:, None] + nq[None, :], union, torch.ones_like(union))
        saving = saving.masked_fill(~(upper & alive[:, None] & alive[None, :]), float("-inf"))
        best = int(saving.argmax())
        i, j = divmod(best, saving.shape[1])
        if not saving[i, j] > 0:
            break
        members[i] += members[j]
        members[j] = []
        alive[j] = False
        reads[i] = torch.maximum(reads[i], reads[j])
        nq[i] += nq[j]
        masked[i] = 1.0
        nk[i] = reads[i] @ k_count
        cost[i] = _cost(nq[i], nk[i], masked[i])
        shared[i] = (reads[i] * k_count) @ reads.T
        shared[:, i] = shared[i]
    return [m for m in members if m]


def build_partition_plan(class_table: torch.Tensor, q_classes: torch.Tensor, k_classes: torch.Tensor) -> PartitionPlan:
    """Partition the queries of a class-structured mask (see module docstring).

    Args:
        class_table: (C, C) weights, 0 where blocked.
        q_classes: (nq,) class of each query row.
        k_classes: (nk,) class of each key row.

    """
    nq_total, nk_total = q_classes.numel(), k_classes.numel()
    q_used, q_inv = torch.unique(q_classes, return_inverse=True)
    k_used, k_inv = torch.unique(k_classes, return_inverse=True)
    weights = class_table[q_used][:, k_used].double()  # (Cq, Ck)
    k_count = torch.bincount(k_inv, minlength=len(k_used))
    q_count = torch.bincount(q_inv, minlength=len(q_used))
    top = weights.amax(1, keepdim=True)
    live = top.squeeze(1) > 0
    rel = torch.where(live[:, None], weights / top.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    live_classes = live.nonzero().squeeze(1)
    rows, row_of = torch.unique(rel[live_classes], dim=0, return_inverse=True)  # distinct relative rows
    row_queries = torch.zeros(len(rows), dtype=torch.long).index_add_(0, row_of, q_count[live_classes])
    groups = _merge_groups(rows > 0, torch.zeros(len(rows), dtype=torch.bool), row_queries, k_count)
    # class -> merged group
    class_group = torch.full((len(q_used),), -1, dtype=torch.long)
    row_group = torch.empty(len(rows), dtype=torch.long)
    for g, members in enumerate(groups):
        row_group[members] = g
    class_group[live_classes] = row_group[row_of]
    query_group = class_group[q_inv]  # (nq,)
    positions = torch.arange(nq_total)
    grouped = query_group >= 0
    first = torch.full((len(groups),), nq_total, dtype=torch.long).scatter_reduce_(
        0, query_group[grouped], positions[grouped], "amin"
    )
    rank = torch.empty(len(groups), dtype=torch.long)
    rank[torch.argsort(first)] = torch.arange(len(groups))
    # order: groups by first query, rows without keys last; stable keeps rows ascending
    sort_key = torch.full((nq_total,), len(groups), dtype=torch.long)
    sort_key[grouped] = rank[query_group[grouped]]
    order = torch.argsort(sort_key, stable=True)

    singles: list[QueryPartition] = []
    small: dict[tuple[int, int, str], list[QueryPartition]] = {}
    computed = 0
    for g in torch.argsort(first).tolist():
        members = groups[g]
        q_index = (query_group == g).nonzero().squeeze(1)
        reads = (rows[members] > 0).any(0)  # (Ck,)
        k_index = reads[k_inv].nonzero().squeeze(1)
        if len(members) == 1:
            rel_keys = rows[members[0]][k_inv[k_index]]
            bias = None if bool((rel_keys == 1.0).all()) else rel_keys.log()[None, :].float()
        else:
            per_query = rel[q_inv[q_index]][:, k_inv[k_index]]  # (nq, nk)
            bias = per_query.log().float()
        part = QueryPartition(q_index, _span(q_index), k_index, _runs(k_index), bias)
        computed += part.pairs
        if part.pairs >= BATCH_PAIRS:
            singles.append(part)
        else:
            kind = "none" if bias is None else ("row" if bias.shape[0] == 1 else "full")
            small.setdefault((q_index.numel(), k_index.numel(), kind), []).append(part)
    batches = tuple(
        PartitionBatch(
            torch.stack([p.q_index for p in parts]),
            torch.stack([p.k_index for p in parts]),
            None if parts[0].bias is None else torch.stack([p.bias for p in parts]),
        )
        for parts in small.values()
    )
    return PartitionPlan(tuple(singles), batches, order, nq_total, nk_total, computed, bool(grouped.all()))


def _remap(index: torch.Tensor, inverse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sorted new rows, column order)`` of rows ``index`` after a permutation with inverse ``inverse``."""
    new = inverse[index]
    perm = torch.argsort(new, dim=-1)
    return new.gather(-1, perm), perm


def reorder_partition_plan(plan: PartitionPlan, k_order: torch.Tensor) -> PartitionPlan:
    """Return the plan of the same mask with its queries in ``plan.order`` and keys permuted by ``k_order``.

    What :func:`build_partition_plan` returns on the reordered mask (the compiler orders every
    group this way), without grouping the classes again.
    """
    q_inv, k_inv = torch.argsort(plan.order), torch.argsort(k_order)
    singles = []
    for part in plan.singles:
        q_index, q_perm = _remap(part.q_index, q_inv)
        k_index, k_perm = _remap(part.k_index, k_inv)
        bias = part.bias
        if bias is not None:
            bias = bias[:, k_perm] if bias.shape[0] == 1 else bias[q_perm][:, k_perm]
        singles.append(QueryPartition(q_index, _span(q_index), k_index, _runs(k_index), bias))
    batches = []
    for batch in plan.batches:
        q_index, q_perm = _remap(batch.q_index, q_inv)
        k_index, k_perm = _remap(batch.k_index, k_inv)
        bias = batch.bias
        if bias is not None:
            if bias.shape[1] > 1:
                bias = bias.gather(1, q_perm[:, :, None].expand(-1, -1, bias.shape[2]))
            bias = bias.gather(2, k_perm[:, None, :].expand(-1, bias.shape[1], -1))
        batches.append(PartitionBatch(q_index, k_index, bias))
    order = torch.arange(plan.num_queries)
    return replace(plan, singles=tuple(singles), batches=tuple(batches), order=order)
