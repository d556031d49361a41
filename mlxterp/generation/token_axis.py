"""Token positions in generation: which index entries address the token axis, and where each lands per step.

A step computes the tokens ``[offset, offset + n)``: the whole prompt at step 0 (``offset`` 0, ``n`` the
prompt's columns), one new token at step ``k >= 1`` (``offset = P + k - 1``, ``n`` 1). An index on the token
axis of a module value is read this way:

- ``:`` (the whole axis) and ``-1`` (the step's last token) apply at every step as written;
- a non-negative position ``p`` or range ``a:b`` is absolute: it lands at the step that computes it,
  rewritten to that step's columns (``[:, 3]`` is column 3 of the prompt pass; with a 5-token prompt,
  ``[:, 6]`` is column 0 of step 2), and does not exist at the other steps;
- anything else (``-2``, ``-3:``, an array of positions) is relative to the prompt pass and exists only there.

Attention scores and patterns also have a *key* axis: one column per position the step's queries attend to,
``[0, offset + n)`` (every key the cache holds). Key positions are absolute and live in the cache, so an entry
there reads the same at every step: ``p >= 0`` is key ``p`` at every step that has it (absent before), a
negative index counts back from the step's newest key (absent where there are not that many), a slice takes
the keys of the step it names (absent where it names none); an array of positions means something only in
the prompt pass.

Which axis is the token axis is found by building the recorded graph's values (lazily, never evaluated) for
two token counts and comparing shapes: an axis whose size follows the token count is a token axis. A third
build, of a decode step (the same new tokens after one cached key), tells key axes (they grow with the cache)
from query axes (they do not).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import mlx.core as mx

from mlxterp.compiler import Graph, Op, Ref
from mlxterp.compiler.ir import MODULE_OPS, map_refs
from mlxterp.compiler.semantics import evaluate

from ..inputs import is_int

FULL, LAST, ABSOLUTE, RELATIVE = "full", "last", "absolute", "relative"
INDEXING = (Op.GETITEM, Op.SETITEM)


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    """One index entry on a token axis: where it sits in the node's index tuple, and how it reads."""

    position: int  # in the normalized index tuple
    entry: Any
    kind: str  # FULL, LAST, ABSOLUTE or RELATIVE
    key: bool = False  # on a key axis (attention scores and patterns) rather than the query/token axis

    @property
    def absolute(self) -> bool:
        """Whether it names a position counted from the sequence's start (a different column in each row
        of a left-padded batch)."""
        if is_int(self.entry):
            return self.entry >= 0
        if isinstance(self.entry, slice):
            return any(is_int(v) and v >= 0 for v in (self.entry.start, self.entry.stop))
        return self.kind == ABSOLUTE

    def at(self, offset: int, n: int, first: bool) -> Any:
        """The entry rewritten for a step computing ``[offset, offset + n)``; ``ABSENT`` when it addresses
        no token of that step, ``INVALID`` when it cannot be read there."""
        if self.key:
            return _on_keys(self.entry, offset + n, first)
        if self.kind in (FULL, LAST):
            return self.entry
        if self.kind == RELATIVE:
            if not first:
                return INVALID
            if is_int(self.entry) and -self.entry > n:
                return INVALID
            return self.entry
        if is_int(self.entry):
            return self.entry - offset if offset <= self.entry < offset + n else ABSENT
        start = max(self.entry.start or 0, offset)
        stop = min(offset + n if self.entry.stop is None else self.entry.stop, offset + n)
        return slice(start - offset, stop - offset) if start < stop else ABSENT


def _on_keys(entry: Any, keys: int, first: bool) -> Any:
    """A key-axis entry at a step whose queries attend to positions ``[0, keys)`` (key columns are
    positions: entries read as written, within bounds)."""
    if is_int(entry):
        return entry if -keys <= entry < keys else ABSENT
    if isinstance(entry, slice) and all(v is None or is_int(v) for v in (entry.start, entry.stop, entry.step)):
        return entry if len(range(keys)[entry]) else ABSENT
    return entry if first else INVALID


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


ABSENT = _Marker("ABSENT")
INVALID = _Marker("INVALID")


def classify(entry: Any) -> str:
    """How an index entry on the token axis reads (see the module docstring)."""
    if isinstance(entry, slice) and entry.step in (None, 1):
        start, stop = entry.start, entry.stop
        if start is None and stop is None:
            return FULL
        if start == -1 and stop is None:
            return LAST
        if all(v is None or (is_int(v) and v >= 0) for v in (start, stop)):
            return ABSOLUTE
        return RELATIVE
    if is_int(entry):
        return LAST if entry == -1 else ABSOLUTE if entry >= 0 else RELATIVE
    return RELATIVE


def reach(index: Any) -> int:
    """The largest magnitude of an integer position in ``index`` (entries and slice bounds; 0 if none): a
    sequence one longer holds every position it names."""
    values = []
    for entry in _as_tuple(index):
        values += [entry.start, entry.stop] if isinstance(entry, slice) else [entry]
    return max((abs(int(v)) for v in values if is_int(v)), default=0)


def graph_reach(graph: Graph) -> int:
    """:func:`reach` over every indexing node of ``graph``."""
    return max((reach(node.args[1]) for node in graph if node.op in INDEXING), default=0)


def needs_analysis(graph: Graph) -> bool:
    """Whether any indexing node has an entry that could be a position other than ``:`` or ``-1``."""
    for node in graph:
        if node.op in INDEXING:
            for entry in _as_tuple(node.args[1]):
                if entry is not Ellipsis and entry is not None and classify(entry) not in (FULL, LAST):
                    return True
    return False


def token_entries(graph: Graph, values_at: Callable[[int], Callable[[tuple], Any]], lengths: tuple[int, int],
                  decode_at: Callable[[], Callable[[tuple], Any]] | None = None) -> dict[int, tuple[TokenEntry, ...]]:
    """For every indexing node, its entries on token axes (nodes without any are left out).

    ``values_at(n)`` gives, for ``n`` tokens, a function from a module event to its ``(shape, dtype)``;
    ``lengths`` are two distinct token counts long enough for every position the graph names;
    ``decode_at()``, the same for ``lengths[0]`` tokens after one cached position (``None``: the graph has no
    key axes).
    """
    first, second = (_abstract_values(graph, values_at(n)) for n in lengths)
    decode = _abstract_values(graph, decode_at()) if decode_at is not None else first
    found: dict[int, tuple[TokenEntry, ...]] = {}
    for node in graph:
        if node.op not in INDEXING:
            continue
        x = node.args[0]
        a, b, c = first.get(x.id), second.get(x.id), decode.get(x.id)
        if not (isinstance(a, mx.array) and isinstance(b, mx.array)):
            continue
        axes = [i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q]
        keys = set(i for i in axes if isinstance(c, mx.array) and c.shape[i] != a.shape[i])
        index = _as_tuple(node.args[1])
        entries = []
        for axis in axes:
            pos = _entry_for_axis(index, a.ndim, axis)
            if pos is not None:
                entries.append(TokenEntry(pos, index[pos], classify(index[pos]), axis in keys))
        if any(e.kind not in (FULL, LAST) for e in entries):
            found[node.id] = tuple(entries)
    return found


def rewrite_index(index: Any, entries: tuple[TokenEntry, ...], local: tuple) -> Any:
    """``index`` with each token entry replaced by its step-local form (keeps a bare entry bare)."""
    items = list(_as_tuple(index))
    for entry, value in zip(entries, local):
        items[entry.position] = value
    return tuple(items) if isinstance(index, tuple) else items[0]


def _as_tuple(index: Any) -> tuple:
    return index if isinstance(index, tuple) else (index,)


def _entry_for_axis(index: tuple, ndim: int, axis: int) -> int | None:
    """Position in ``index`` of the entry that consumes input axis ``axis`` (None: the axis is untouched
    or inside an ``...``)."""
    consuming = sum(1 for e in index if e is not None and e is not Ellipsis)
    current = 0
    for pos, entry in enumerate(index):
        if entry is None:
            continue
        if entry is Ellipsis:
            current += ndim - consuming
            continue
        if current == axis:
            return pos
        current += 1
    return None


def _abstract_values(graph: Graph, spec: Callable[[tuple], Any]) -> dict[int, Any]:
    """Each node's value built lazily (never evaluated) for one token count; errors name the user's line."""
    values: dict[int, Any] = {}
    for node in graph:
        if node.op is Op.SAVE:
            continue
        try:
            values[node.id] = _abstract(node, values, spec)
        except Exception as e:
            raise ValueError(f"{node.describe()} traced at {node.source} cannot be computed for generation: "
                             f"{type(e).__name__}: {e}") from e
    return values


def _abstract(node: Any, values: dict[int, Any], spec: Callable[[tuple], Any]) -> Any:
    if node.op in MODULE_OPS:
        path, idx = node.target
        found = spec((path, idx, "output" if node.op is Op.MODULE_OUTPUT else "input"))
        return mx.zeros(*found) if isinstance(found, tuple) else None
    if node.op is Op.CONSTANT:
        return node.meta["value"]
    if node.op is Op.REPLACE:
        return values.get(node.args[0].id)
    lookup: Callable[[Ref], Any] = lambda r: values[r.id]  # noqa: E731
    return evaluate(node, map_refs(node.args, lookup), map_refs(node.kwargs, lookup) if node.kwargs else {})
