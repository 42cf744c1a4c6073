"""Flattening, placement and wiring of typed fields, for :func:`canvas_engineering.compile_schema`.

Flattening
----------
:func:`walk` visits an object tree in declaration order and reports every region value
(a ``Field``) with its dotted path; it returns the tree of typed objects
(:class:`TypeNode`) that the wiring policies read.

Placement
---------
Every field of a typed schema is an ``h x w`` rectangle that occupies the same ``(h, w)``
footprint in every canvas frame, so packing is a 2-D problem on the ``H x W`` grid. Two
strategies, both deterministic (same items in the same order give the same placements):

* ``"packed"`` (default): shelf packing in declaration order. Items go left to right on
  the current shelf; an item that does not fit in the remaining width opens a new shelf
  below the tallest item of the current one. An item that fits nowhere is skipped (and
  reported) without disturbing the shelves, so later, smaller items can still be placed.
* ``"rows"``: one item per row band, each band starting at column 0.

Because items are placed in order and never moved, a prefix of the items (for example
the fields a subclass inherits) gets the same placements whatever follows it.

Wiring
------
:func:`wire` turns the walked object tree (:class:`TypeNode`) into a ``CanvasTopology``
by a named policy; ``"hierarchical"`` and ``"causal"`` are documented there. Every
policy gives each field self-attention, and connections leave ``fn`` unset so each uses
its source region's ``default_attn`` (the field's ``attn``).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import torch

from canvas_engineering.declare.topology import CanvasTopology, Connection

__all__ = [
    "CONNECTIVITY_POLICIES",
    "LAYOUT_STRATEGIES",
    "ConnectivityPolicy",
    "LayoutStrategy",
    "PackItem",
    "PackResult",
    "TypeNode",
    "auto_size",
    "hierarchical_pairs",
    "is_walkable",
    "pack",
    "walk",
    "wire",
]

#: Names accepted by ``compile_schema(layout_strategy=...)``.
LayoutStrategy = Literal["packed", "rows"]
LAYOUT_STRATEGIES: tuple[str, ...] = get_args(LayoutStrategy)

#: Names accepted by ``compile_schema(connectivity=...)``.
ConnectivityPolicy = Literal["hierarchical", "causal", "dense", "isolated"]
CONNECTIVITY_POLICIES: tuple[str, ...] = get_args(ConnectivityPolicy)


# -- flattening -------------------------------------------------------------------------------


@dataclass
class TypeNode:
    """One typed object of the walked tree.

    Attributes:
        path: the object's dotted path (``""`` for the root).
        fields: paths of its own fields (elements of a list of Fields included).
        children: nested typed objects and typed list elements, in declaration order.
        lists: typed list elements grouped by list (only lists with two or more).

    """

    path: str
    fields: list[str] = field(default_factory=list)
    children: list[TypeNode] = field(default_factory=list)
    lists: list[list[TypeNode]] = field(default_factory=list)

    def subtree_fields(self) -> Iterator[str]:
        """Every field path of the object and its descendants, in declaration order."""
        yield from self.fields
        for child in self.children:
            yield from child.subtree_fields()


# Values never walked as nested types (their attributes are not regions).
_LEAVES = (
    str, bytes, bytearray, int, float, complex, bool, type(None), enum.Enum, type, types.ModuleType,
    Mapping, set, frozenset, range, list, tuple, torch.Tensor, torch.nn.Module,
)  # fmt: skip


def is_walkable(value: object) -> bool:
    """Whether ``value`` may be walked as a nested typed object (not a plain value)."""
    return not isinstance(value, _LEAVES)


def _is_pydantic(obj: object) -> bool:
    return any(k.__module__.startswith("pydantic") for k in type(obj).__mro__[1:])


def _attributes(obj: object) -> Iterator[tuple[str, object]]:
    """``(name, value)`` of the public attributes of ``obj`` in declaration order.

    Dataclass fields, then pydantic model fields, then class attributes (base classes
    first; methods, properties and other descriptors skipped) and instance attributes.
    """
    declared: list[str] = []
    if dataclasses.is_dataclass(obj):
        declared += [f.name for f in dataclasses.fields(obj)]
    if _is_pydantic(obj):
        declared += list(getattr(type(obj), "model_fields", None) or getattr(type(obj), "__fields__", {}))
    instance = getattr(obj, "__dict__", {})
    seen: set[str] = set()
    for name in declared:
        if name not in seen and not name.startswith("_"):
            seen.add(name)
            yield name, getattr(obj, name)
    for klass in reversed(type(obj).__mro__):
        if klass is object or klass.__module__.startswith("pydantic"):
            continue
        for name, raw in vars(klass).items():
            if name in seen or name.startswith("_"):
                continue
            seen.add(name)
            if name in instance:
                yield name, instance[name]
            elif not hasattr(type(raw), "__get__"):
                yield name, raw
    for name, value in instance.items():
        if name not in seen and not name.startswith("_"):
            seen.add(name)
            yield name, value


def walk(
    obj: object, is_region: Callable[[object], bool], on_region: Callable[[str, object], None], path: str = ""
) -> TypeNode | None:
    """Visit ``obj`` depth-first in declaration order; ``None`` if it holds no region.

    Each attribute value (read as described in :mod:`canvas_engineering.typed.fields`) is a
    region if ``is_region(value)`` (reported as ``on_region(path, value)``), a list or
    tuple (one path ``name[i]`` per element; nested lists are not searched), or a nested
    object walked in turn when :func:`is_walkable`. A back-reference to an object being
    walked (``arm.robot = robot``) is ignored, so cycles end.
    """
    return _walk(obj, path, is_region, on_region, set())


def _walk(
    obj: object,
    path: str,
    is_region: Callable[[object], bool],
    on_region: Callable[[str, object], None],
    stack: set[int],
) -> TypeNode | None:
    if id(obj) in stack:
        return None
    stack.add(id(obj))
    node = TypeNode(path)
    for name, value in _attributes(obj):
        child_path = f"{path}.{name}" if path else name
        if is_region(value):
            on_region(child_path, value)
            node.fields.append(child_path)
        elif isinstance(value, (list, tuple)):
            group = []
            for i, item in enumerate(value):
                item_path = f"{child_path}[{i}]"
                if is_region(item):
                    on_region(item_path, item)
                    node.fields.append(item_path)
                elif is_walkable(item) and (sub := _walk(item, item_path, is_region, on_region, stack)):
                    group.append(sub)
            node.children += group
            if len(group) > 1:
                node.lists.append(group)
        elif is_walkable(value) and (sub := _walk(value, child_path, is_region, on_region, stack)):
            node.children.append(sub)
    stack.discard(id(obj))
    return node if node.fields or node.children else None


class PackItem(NamedTuple):
    """One rectangle to place: ``path`` names it, ``h`` x ``w`` grid cells."""

    path: str
    h: int
    w: int


@dataclass(frozen=True)
class PackResult:
    """Where each item went.

    Attributes:
        placements: path -> ``(h0, h1, w0, w1)`` half-open cell ranges, in item order.
        unplaced: paths of the items that did not fit, in item order.
        height: rows used by the placed items (bottom of the last shelf).

    """

    placements: dict[str, tuple[int, int, int, int]]
    unplaced: tuple[str, ...]
    height: int

    @property
    def fits(self) -> bool:
        """Whether every item was placed."""
        return not self.unplaced


def pack(items: Sequence[PackItem], H: int, W: int, strategy: LayoutStrategy = "packed") -> PackResult:
    """Place ``items`` on an ``H x W`` grid with ``strategy`` (see the module docstring)."""
    placements: dict[str, tuple[int, int, int, int]] = {}
    unplaced: list[str] = []
    x = y = shelf_h = 0  # cursor on the current shelf, its top row and its height
    for item in items:
        same_shelf = strategy == "packed" or x == 0
        if same_shelf and x + item.w <= W and y + item.h <= H:
            top, left = y, x
            shelf_h = max(shelf_h, item.h)
        elif item.w <= W and y + shelf_h + item.h <= H:
            y, shelf_h = y + shelf_h, item.h  # open a new shelf below the current one
            top, left = y, 0
        else:
            unplaced.append(item.path)
            continue
        placements[item.path] = (top, top + item.h, left, left + item.w)
        x = left + item.w
    return PackResult(placements=placements, unplaced=tuple(unplaced), height=y + shelf_h)


def _height_at(items: Sequence[PackItem], W: int, strategy: LayoutStrategy) -> int | None:
    """Rows needed at width ``W`` (``None`` if an item is wider than ``W``)."""
    if any(item.w > W for item in items):
        return None
    return pack(items, sum(item.h for item in items), W, strategy).height


def auto_size(
    items: Sequence[PackItem], strategy: LayoutStrategy = "packed", H: int | None = None, W: int | None = None
) -> tuple[int, int]:
    """Return the grid ``(H, W)`` to pack ``items`` on, choosing whichever of ``H``/``W`` is ``None``.

    * Both free: the smallest square-ish grid that fits, i.e. the one minimising
      ``(max(H, W), H * W, |H - W|)`` over every width from the widest item up; on a
      tie the wider grid wins.
    * ``W`` given: the height the items need at that width.
    * ``H`` given: the narrowest width whose packing is at most ``H`` tall.

    When nothing fits (an item is wider than a given ``W`` or taller than a given ``H``)
    the returned grid is the closest attempt, and :func:`pack` reports the misfits.
    """
    if not items:
        return (H or 1, W or 1)
    max_w = max(item.w for item in items)
    widest = max(max_w, sum(item.w for item in items))  # beyond this every item is on one shelf
    if W is not None:
        if H is not None:
            return (H, W)
        placed = [item for item in items if item.w <= W]
        return (max(1, _height_at(placed, W, strategy) or 1), W)
    if H is not None:
        for width in range(max_w, widest + 1):
            height = _height_at(items, width, strategy)
            if height is not None and height <= H:
                return (H, width)
        return (H, max_w if strategy == "rows" else widest)
    total_h = sum(item.h for item in items)
    best = (total_h + widest, 0, 0, 0)  # worse than any real candidate
    for width in range(max_w, widest + 1):
        if width > best[0]:
            break  # max(H, W) >= W can only grow from here
        height = pack(items, total_h, width, strategy).height  # width >= max_w: every item fits
        best = min(best, (max(width, height), width * height, abs(width - height), -width))
    width = -best[3]
    return (best[1] // width, width)


# -- wiring -------------------------------------------------------------------------------


def hierarchical_pairs(root: TypeNode) -> list[tuple[str, str]]:
    """``(src, dst)`` pairs of the hierarchical policy, ordered and without duplicates.

    Visiting objects depth-first in declaration order, for each object:

    1. every field attends itself;
    2. its fields attend each other (both directions);
    3. its fields and the fields of its nearest ancestor *that has fields of its own*
       attend each other (both directions); objects without fields are skipped, so
       ``robot.body.arm`` links to ``robot`` when ``body`` holds no Field;
    4. for each list of typed objects, element ``i`` attends element ``j``'s
       corresponding fields (``i != j``): ``robots[i].<suffix>`` -> ``robots[j].<suffix>``
       for every suffix (``.camera``, ``.arm.joints``) both elements have.

    Sibling objects are not wired to each other directly; they meet through their
    parent's fields (or through rule 4 when they are elements of one list).
    """
    pairs: dict[tuple[str, str], None] = {}

    def visit(node: TypeNode, anchor: list[str]) -> None:
        own = node.fields
        pairs.update(dict.fromkeys((s, s) for s in own))  # 1. self
        pairs.update(dict.fromkeys((s, d) for s in own for d in own))  # 2. same object
        for p in anchor if own else ():  # 3. nearest ancestor with fields
            for c in own:
                pairs.update(dict.fromkeys([(p, c), (c, p)]))
        for child in node.children:
            visit(child, own or anchor)
        for group in node.lists:  # 4. corresponding fields of list siblings
            by_suffix = [{f[len(e.path) :]: f for f in e.subtree_fields()} for e in group]
            for i, a in enumerate(by_suffix):
                for j, b in enumerate(by_suffix):
                    if i != j:
                        pairs.update(dict.fromkeys((a[s], b[s]) for s in a if s in b))

    visit(root, [])
    return list(pairs)


def wire(policy: ConnectivityPolicy | CanvasTopology, root: TypeNode, paths: Sequence[str]) -> CanvasTopology:
    """Return the ``CanvasTopology`` of a policy over the fields of ``root``.

    Args:
        policy: ``"hierarchical"`` (:func:`hierarchical_pairs`, no frame constraint);
            ``"causal"`` (the hierarchical pairs with frame offsets as in
            ``CanvasTopology.causal_temporal``: a self pair reads its own frame,
            ``t_src=0, t_dst=0``, and the previous one, ``t_dst=-1``; any other pair reads
            the previous frame only, so no query reads a later frame and different regions
            exchange information one frame later); ``"dense"`` (every field attends every
            field); ``"isolated"`` (self-attention only); or a ``CanvasTopology``, returned
            as is.
        root: the walked object tree.
        paths: every field path, in region order.

    """
    if isinstance(policy, CanvasTopology):
        return policy
    if policy == "dense":
        return CanvasTopology.dense(list(paths))
    if policy == "isolated":
        return CanvasTopology.isolated(list(paths))
    pairs = hierarchical_pairs(root)
    if policy == "hierarchical":
        return CanvasTopology([Connection(s, d) for s, d in pairs])
    conns = []
    for s, d in pairs:  # causal
        if s == d:
            conns.append(Connection(s, d, t_src=0, t_dst=0))
        conns.append(Connection(s, d, t_src=0, t_dst=-1))
    return CanvasTopology(conns)
