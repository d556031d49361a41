"""The executor: runs a recorded graph eagerly or compiled, with a cache keyed by structure and shapes.

``mode`` is ``"eager"`` (the reference interpreter), ``"compiled"`` (``mx.compile`` over the lowered
forward, with the model's state as an implicit input so weight edits are seen) or ``"auto"`` (eager the
first time a (structure, shapes) key is seen, compiled once it repeats). A cache hit skips every pass:
only the constants' values are read off the new graph.

Lowerings hook module objects, so they belong to one module tree: before every run the executor checks the
model's tree (:class:`.tree.ModuleTree`, a few microseconds); when a module was replaced since (quantized,
wrapped, swapped), every lowering is dropped, ``tree_version`` goes up, and whoever built the executor is
told (``on_tree_change``) so that what it derived from the old tree is rebuilt before anything runs.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Hashable

import mlx.core as mx
import mlx.nn as nn

from .ir import Graph
from .locks import model_lock, serialised
from .lowering import PatchedForward, default_call
from .passes import PassResult, run_passes
from .passes.lift import param_sources, param_values
from .points import Points
from .probe import Probe
from .program import LoweredProgram
from .state_compile import StateCompiled
from .structure import structure_key
from .tree import ModuleTree

MODES = ("eager", "compiled", "auto")
"""The executor's modes: the eager interpreter, ``mx.compile``, or eager until a structure repeats."""


@dataclasses.dataclass
class CacheEntry:
    """One lowered program: the graph after the passes (which holds no constant values: they became params,
    so a cached program keeps no arrays of the trace that built it alive), the eager function and (once
    needed) the compiled one."""

    optimized: Graph
    forward: PatchedForward
    compiled: Callable | None = None
    runs: int = 0
    # Ids of the recorded constants whose values the params take, in param order (see passes.lift).
    sources: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one execution returns, plus how it ran.

    Attributes:
        output: the model's output (a language model's logits ``(batch, seq, vocab)``), or ``None`` when the
            forward stopped after its last needed event.
        saves: ``{save key: value}``, each value as the graph computed it (an ``mx.array`` of the shape and
            dtype of the module value it came from, or of the computation on it).
        captures: ``{module path: output}`` of the captured module calls (``"path#k"`` for call ``k > 0``).
        mode: ``"eager"`` or ``"compiled"``.
        entry: the cached lowering that ran.
    """

    output: Any
    saves: dict
    captures: dict
    mode: str
    entry: CacheEntry


class Executor:
    """Runs graphs against one model; owns the compile cache and its statistics.

    Args:
        model: the module to run.
        call: how the lowered forward calls the model.
        max_entries: cached lowerings kept (least recently used dropped).
        points: the model's points (see :mod:`.points`).
        stop_early: let forwards stop after their last needed event.
        on_tree_change: called (holding the model's lock) when :meth:`sync` finds the module tree changed,
            before the new tree is accepted: if it raises, the next :meth:`sync` tries again.
    """

    def __init__(self, model: nn.Module, *, call: Callable[[nn.Module, mx.array], Any] = default_call,
                 max_entries: int = 256, points: Points | None = None, stop_early: bool = True,
                 on_tree_change: Callable[[], None] | None = None):
        self.model = model
        self.call = call
        self.points = points
        self.stop_early = stop_early
        self.max_entries = max_entries
        self.on_tree_change = on_tree_change
        self._cache: collections.OrderedDict[Hashable, CacheEntry] = collections.OrderedDict()
        self.stats: collections.Counter = collections.Counter()
        self._tree = ModuleTree(model)
        self.tree_version = 0  # bumped by every change sync() finds; lowerings record the one they were built on

    def sync(self) -> bool:
        """Check the model's module tree; if a module was replaced since the last check, drop every cached
        lowering, call ``on_tree_change`` and bump ``tree_version``. Returns whether it changed."""
        if self._tree.current():  # reading the slots needs no lock: a running forward swaps classes, not modules
            return False
        return self._renew()

    def share_cache(self, other: "Executor") -> None:
        """Keep lowerings (and statistics) in ``other``'s cache: both executors run the same module tree, so a
        lowering built by one hooks the modules the other runs. Keys are graph structures: two graphs share
        an entry only where they are the same program."""
        if other.model is not self.model:
            raise ValueError("executors share a cache only when they run the same module tree")
        self._cache, self.stats = other._cache, other.stats

    def rebase(self, model: nn.Module) -> None:
        """Run ``model`` from now on: another module tree (an edited copy of this one, sharing its lock: see
        :func:`.locks.share_lock`). Handled as a tree change: ``on_tree_change`` is called and ``tree_version``
        goes up, so programs lowered on the old tree are lowered again; the cache starts empty and is this
        executor's own (one it shared still serves the old tree's executors)."""
        with model_lock(self.model):
            self.model = model
            self._cache = collections.OrderedDict()
            self._renew(force=True)

    @serialised(lambda executor: executor.model)
    def _renew(self, force: bool = False) -> bool:
        if not force and self._tree.current():  # another thread renewed it while this one waited for the lock
            return False
        tree = ModuleTree(self.model)
        self._cache.clear()
        if self.on_tree_change is not None:
            self.on_tree_change()
        self._tree = tree
        self.tree_version += 1
        self.stats["tree_changes"] += 1
        return True

    def key(self, graph: Graph, tokens: mx.array) -> Hashable:
        """Cache key: the graph's structure and the input's shape and dtype."""
        return (structure_key(graph), tuple(tokens.shape), tokens.dtype)

    @serialised(lambda executor: executor.model)  # one forward of a model at a time; cache and stats too
    def run(self, graph: Graph, tokens: mx.array, probe: Callable[[], Probe], mode: str = "auto") -> RunResult:
        """Execute ``graph`` on ``tokens`` (the model's input: ``(batch, seq)`` integer token ids for a language
        model); ``probe()`` gives the execution order on a cache miss."""
        if mode not in MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {MODES} (True = 'compiled', False = 'eager')")
        self.sync()
        entry = self.entry(graph, tokens, probe)
        params = param_values(graph, entry.sources)
        compiled = mode == "compiled" or (mode == "auto" and entry.runs > 0)
        entry.runs += 1
        if compiled:
            fn = entry.compiled or self._compile(entry)
            self.stats["compiled_runs"] += 1
            output, saves, captures = fn(tokens, params)
        else:
            self.stats["eager_runs"] += 1
            output, saves, captures = entry.forward(tokens, params)
        return RunResult(output, saves, captures, "compiled" if compiled else "eager", entry)

    def lower(self, graph: Graph, probe: Probe) -> CacheEntry:
        """Run the passes on ``graph`` and lower it (no caching)."""
        result: PassResult = run_passes(graph, probe.events)
        forward = PatchedForward(self.model, result.after, result.schedule, call=self.call, points=self.points,
                                 stop_early=self.stop_early)
        return CacheEntry(result.after, forward, sources=param_sources(result.after))

    def entry(self, graph: Graph, tokens: mx.array, probe: Callable[[], Probe]) -> CacheEntry:
        """The cached lowering of ``graph`` for inputs shaped like ``tokens`` (lowered on a miss, where
        ``probe()`` gives the execution order)."""
        key = self.key(graph, tokens)
        entry = self._cache.get(key)
        if entry is not None:
            self.stats["hits"] += 1
            self._cache.move_to_end(key)
            return entry
        self.stats["misses"] += 1
        entry = self.lower(graph, probe())
        self._cache[key] = entry
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.stats["evictions"] += 1
        return entry

    @serialised(lambda executor: executor.model)
    def program(self, graph: Graph, tokens: mx.array, probe: Callable[[], Probe]) -> LoweredProgram:
        """``graph`` as a pure function ``(tokens, params) -> saves`` (see :mod:`.program`) of the current
        module tree (its ``tree_version``), for inputs of ``tokens``' shape and dtype; its lowering is shared
        with traces of the same structure."""

        self.sync()
        entry = self.entry(graph, tokens, probe)
        return LoweredProgram(self.model, entry.optimized, entry.forward, self.stats, self.tree_version)

    def _compile(self, entry: CacheEntry) -> Callable:
        entry.compiled = StateCompiled(entry.forward, self.model, self.stats)
        return entry.compiled

    @serialised(lambda executor: executor.model)
    def clear(self) -> None:
        """Drop every cached program (statistics are kept)."""
        self._cache.clear()

    def cache_size(self) -> int:
        """Number of cached programs."""
        return len(self._cache)

