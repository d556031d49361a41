"""The step plan: from the graph recorded once, the graph each generation step runs.

Reads, writes and saves apply at every step unless recorded inside ``with gen.steps[...]``; token positions
are read as :mod:`mlxterp.generation.token_axis` describes. At a step where a write does not apply, whatever
read the written value reads the value before the write instead (a module's write, or a new version of a
spliced dictionary's part: ``bases`` maps each to the version before it). A value that exists at some steps only
(an absolute position, a value read inside ``gen.steps[...]``) cannot feed a write at another step: values
do not carry across steps, and such a program is refused with the line that asked for it.

Steps that differ in nothing the recorded program depends on share one variant graph (in practice: the
prompt pass, and one graph for every decode step), lowered once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from mlxterp.compiler import Graph, Node, Op, Ref
from mlxterp.compiler.ir import map_refs

from .token_axis import ABSENT, INVALID, TokenEntry, is_int, rewrite_index


@dataclasses.dataclass(frozen=True)
class StepRange:
    """Steps ``start, start + step, ...`` before ``stop`` (``None``: no end); ``single`` for an int key."""

    start: int
    stop: int | None
    step: int = 1
    single: bool = False

    @staticmethod
    def from_key(key: Any) -> "StepRange":
        """``gen.steps[key]``: a step index or a slice of them (non-negative; step 0 is the prompt pass)."""
        if is_int(key):
            if key < 0:
                raise IndexError(f"gen.steps[{key}]: steps count from 0 (the prompt pass); negative steps are "
                                 "not known before generation ends")
            return StepRange(int(key), int(key) + 1, 1, True)
        if isinstance(key, slice):
            start, stop, step = key.start or 0, key.stop, 1 if key.step is None else key.step
            bad = [v for v in (start, stop, step) if v is not None and not (is_int(v) and v >= 0)]
            if bad or step == 0:
                raise IndexError(f"gen.steps[{_show(key)}]: start, stop and step must be non-negative ints "
                                 "(step > 0), e.g. gen.steps[1:] or gen.steps[3:6]")
            return StepRange(int(start), None if stop is None else int(stop), int(step))
        raise TypeError(f"gen.steps[{key!r}]: expected a step index or a slice such as gen.steps[0] or "
                        "gen.steps[1:]")

    def __contains__(self, k: int) -> bool:
        return k >= self.start and (self.stop is None or k < self.stop) and (k - self.start) % self.step == 0

    def runs_below(self, limit: int) -> bool:
        """Whether any of these steps is below ``limit`` (the steps a generation can run)."""
        return self.start < limit and (self.stop is None or self.start < self.stop)

    def intersect(self, other: "StepRange") -> "StepRange | None":
        """The steps in both (``None``: none)."""
        stops = [s for s in (self.stop, other.stop) if s is not None]
        stop = min(stops) if stops else None
        low = max(self.start, other.start)
        k = self.start + -(-(low - self.start) // self.step) * self.step  # this range's first step >= low
        for _ in range(other.step // math.gcd(self.step, other.step)):  # residues mod other.step repeat after
            if stop is not None and k >= stop:
                return None
            if k in other:
                return StepRange(k, stop, math.lcm(self.step, other.step), self.single or other.single)
            k += self.step
        return None

    def show(self) -> str:
        """How it was written: ``gen.steps[3]``, ``gen.steps[1:]``."""
        if self.single:
            return f"gen.steps[{self.start}]"
        stop = "" if self.stop is None else self.stop
        return f"gen.steps[{self.start or ''}:{stop}{'' if self.step == 1 else f':{self.step}'}]"


def _hashable(entries: tuple | None) -> tuple | None:
    """Step-local index entries as a dict key (slices are not hashable before Python 3.12)."""
    if entries is None:
        return None
    return tuple(("slice", e.start, e.stop, e.step) if isinstance(e, slice) else e for e in entries)


def _show(key: slice) -> str:
    return ":".join("" if v is None else str(v) for v in (key.start, key.stop, key.step))


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Columns of the prompt pass and whether every row is a real token there (no padding)."""

    prompt_columns: int
    uniform: bool

    def span(self, k: int) -> tuple[int, int]:
        """``(offset, n)``: the positions ``[offset, offset + n)`` step ``k`` computes."""
        return (0, self.prompt_columns) if k == 0 else (self.prompt_columns + k - 1, 1)


class StepPlan:
    """Per-step variant graphs of one recorded generation program."""

    def __init__(self, graph: Graph, scopes: dict[int, tuple[StepRange, ...]], bases: dict[int, int],
                 entries: dict[int, tuple[TokenEntry, ...]], geometry: Geometry):
        self.graph = graph
        self.scopes = scopes
        self.bases = bases
        self.entries = entries
        self.geometry = geometry
        self._dependent = sorted(set(scopes) | set(entries))
        self._variants: dict[tuple, Graph] = {}
        if not geometry.uniform:
            self._refuse_absolute_positions()

    def variant(self, k: int) -> Graph:
        """The graph step ``k`` runs (shared by every step with the same signature)."""
        offset, n = self.geometry.span(k)
        local = {i: tuple(e.at(offset, n, k == 0) for e in self.entries[i]) for i in self.entries}
        signature = (k == 0,) + tuple((self._in_scope(i, k), _hashable(local.get(i))) for i in self._dependent)
        found = self._variants.get(signature)
        if found is None:
            found = self._variants[signature] = self._build(k, local)
        return found

    def pinned_saves(self) -> set[int]:
        """Saves that exist at one step by construction (inside an int ``gen.steps[k]``, of a value read
        there, or of an absolute token position): their value is that step's, without a steps axis."""
        pinned: set[int] = set()
        for node in self.graph:
            single = any(s.single for s in self.scopes.get(node.id, ()))
            if node.op is Op.SAVE:
                if single or node.args[0].id in pinned:
                    pinned.add(node.id)
            elif node.op is Op.REPLACE or node.id in self.bases:  # a write's result is read at every step (the
                continue                                            # unwritten value elsewhere)
            elif single:  # a value read inside `gen.steps[k]`
                pinned.add(node.id)
            elif any(not e.key and e.kind == "absolute" and is_int(e.entry) for e in self.entries.get(node.id, ())) \
                    or any(r in pinned for r in node.refs()):
                pinned.add(node.id)
        return pinned

    # -- building one step's graph ------------------------------------------------------------
    def _in_scope(self, node_id: int, k: int) -> bool:
        return all(k in s for s in self.scopes.get(node_id, ()))

    def _build(self, k: int, local: dict[int, tuple]) -> Graph:
        absent: dict[int, str] = {}  # node id -> "own" (its position is not in this step) or "input"
        invalid: set[int] = set()
        redirect: dict[int, int] = {}
        nodes: list[Node] = []
        for node in self.graph:
            refs = [self._follow(r, redirect) for r in node.refs()]
            if node.op is Op.SAVE:
                if not self._in_scope(node.id, k) or refs[0] in absent:
                    continue
            elif node.op is Op.REPLACE:
                if not self._in_scope(node.id, k) or absent.get(refs[0]) == "own":
                    redirect[node.id] = self.bases[node.id]
                    continue
                if refs[0] in absent:
                    raise self._cross_step(node, k)
            elif node.id in self.bases:  # a new version of a spliced dictionary's part: a write, as above (and the
                own = node.id in local and ABSENT in local[node.id]  # reconstruction decoded from written features)
                if not self._in_scope(node.id, k) or own or node.meta.get("derived_from") in redirect:
                    redirect[node.id] = self.bases[node.id]
                    continue
                if any(r in absent for r in refs):
                    raise self._cross_step(node, k)
            elif not self._in_scope(node.id, k):  # read inside `gen.steps[...]`: exists at those steps only
                absent[node.id] = "input"
                continue
            elif node.id in local and ABSENT in local[node.id]:
                absent[node.id] = "own"
                continue
            elif any(r in absent for r in refs):
                absent[node.id] = "input"
                continue
            if node.id in local and INVALID in local[node.id]:
                invalid.add(node.id)
            nodes.append(self._rewrite(node, redirect, local.get(node.id)))
        graph = self.graph.with_nodes(nodes)
        self._check_invalid(graph, invalid, k)
        return graph

    def _follow(self, node_id: int, redirect: dict[int, int]) -> int:
        while node_id in redirect:
            node_id = redirect[node_id]
        return node_id

    def _rewrite(self, node: Node, redirect: dict[int, int], local: tuple | None) -> Node:
        fix: Callable[[Ref], Ref] = lambda r: Ref.of(self._follow(r.id, redirect))  # noqa: E731
        args = map_refs(node.args, fix) if redirect else node.args
        if local is not None:
            args = (args[0], rewrite_index(args[1], self.entries[node.id], local)) + tuple(args[2:])
        return node if args is node.args else node.replace(args=args)

    def _check_invalid(self, graph: Graph, invalid: set[int], k: int) -> None:
        if not invalid:
            return
        live: set[int] = set()
        for node in reversed(graph.nodes):
            if node.op in (Op.SAVE, Op.REPLACE) or node.id in live:
                live.update(node.refs())
                live.add(node.id)
        for node_id in sorted(invalid & live):
            node = graph.node(node_id)
            bad = [e for e in self.entries[node_id] if e.at(*self.geometry.span(k), k == 0) is INVALID][0]
            rule = ("on the key axis, positions (>= 0), negative indices and slices apply at every step" if bad.key
                    else "only ':', -1 and absolute positions (>= 0) apply at every step")
            raise ValueError(
                f"{node.describe()} traced at {node.source} indexes the {'key' if bad.key else 'token'} axis with "
                f"{bad.entry!r}, which has no meaning at generation step {k} ({self._step_words(k)}): {rule}; "
                "restrict it with `with gen.steps[0]:` to read the prompt pass")

    def _step_words(self, k: int) -> str:
        offset, n = self.geometry.span(k)
        return f"the prompt pass, {n} columns" if k == 0 else f"one new token, at position {offset}"

    def _cross_step(self, node: Node, k: int) -> ValueError:
        return ValueError(
            f"{node.describe()} traced at {node.source} writes, at generation step {k} ({self._step_words(k)}), "
            "a value that exists only at other steps (it reads an absolute token position, a step-restricted "
            "write, or a value read inside `with gen.steps[...]:`); values do not carry from one step to another: "
            "compute the value in a trace first and use the array, or restrict the write to the steps where the "
            "value exists")

    def _refuse_absolute_positions(self) -> None:
        for node_id, entries in self.entries.items():
            if any(e.absolute for e in entries):
                node = self.graph.node(node_id)
                raise ValueError(
                    f"{node.describe()} traced at {node.source} indexes an absolute token position, and the "
                    "prompts of this batch have different lengths (left-padded, so a position is a different "
                    "column in each row); use ':' or negative indices, or generate prompts of one length together")
