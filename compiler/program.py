"""A lowered graph as a pure function of its inputs: ``(tokens, params) -> saves``.

The model's state is an implicit input (weight edits are seen). The function is what ``mx.compile``,
``mx.vmap`` and ``mx.grad`` transform: :meth:`LoweredProgram.fn` runs it as is, calling the object runs it
compiled (one trace per input shape, counted in ``stats["traces"]``), and :meth:`LoweredProgram.folded`
runs ``K`` variants in one forward (see :mod:`.fold`), compiled per set of mapped params.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn

from .fold import run_folded
from .ir import Graph
from .lowering import PatchedForward
from .state_compile import StateCompiled


class LoweredProgram:
    """The pure function of one optimized graph (see module doc).

    Args:
        model: the model the graph was recorded on.
        graph: the optimized graph (constants lifted to params ``0..n-1``).
        forward: its lowered forward.
        stats: counters shared with the model's executor (``traces`` counts compilations).
        tree_version: the executor's ``tree_version`` it was lowered on (its forward hooks that tree's
            module objects: a caller re-lowers once the executor's version moves on).
    """

    def __init__(self, model: nn.Module, graph: Graph, forward: PatchedForward, stats: collections.Counter,
                 tree_version: int = 0):
        self.model = model
        self.graph = graph
        self.forward = forward
        self.stats = stats
        self.tree_version = tree_version
        self._compiled: StateCompiled | None = None
        self._folded: dict[frozenset[int], StateCompiled] = {}

    def fn(self, tokens: mx.array, params: list) -> dict:
        """The saves of one run, uncompiled (a pure function: transform it freely).

        Args:
            tokens: the model's input, of the shape and dtype the program was lowered for (``(batch, seq)``
                integer token ids for a language model).
            params: one ``mx.array`` per param of ``self.graph``, in param order: a recorded array as it was,
                a Python number as a float32, int32 or bool scalar (a weak number: cast where it is used).


        Returns:
            ``{save key: mx.array}``, each of the shape and dtype the graph computes.
        """
        return distinct_outputs(self.forward(tokens, params)[1])

    def __call__(self, tokens: mx.array, params: list) -> dict:
        """:meth:`fn` under ``mx.compile`` (traced once per input shape and dtype)."""
        if self._compiled is None:
            self._compiled = self._compile(self.fn)
        return self._compiled(tokens, params)

    def folded(self, tokens: mx.array, params: list, mapped: frozenset[int]) -> dict:
        """``K`` variants in one compiled forward: each param index in ``mapped`` has a leading axis of size
        ``K`` (the same for all); every save comes back with that leading axis, ``(K, *shape)``. The model runs
        on ``tokens`` repeated ``K`` times along the batch axis (``K * batch`` rows)."""

        if not mapped:
            raise ValueError("a folded run needs at least one param with a leading variant axis")
        compiled = self._folded.get(mapped)
        if compiled is None:
            def body(tokens: mx.array, params: list) -> dict:
                k = params[min(mapped)].shape[0]
                return run_folded(self.forward, tokens, params, k, mapped)[1]

            compiled = self._folded[mapped] = self._compile(body)
        return compiled(tokens, params)

    def _compile(self, body: Callable[[mx.array, list], Any]) -> StateCompiled:
        return StateCompiled(body, self.model, self.stats)


def distinct_outputs(saves: dict) -> dict:
    """``saves`` with no array under two keys (a later key gets its own array node holding the same value).

    ``mx.vmap`` moves each output's mapped axis to the front once per occurrence of the array among the
    outputs: an array returned twice whose mapped axis is not already first (a broadcast number, a transpose)
    comes back permuted the second time (MLX 0.32: ``(64, 3, 1, 4)`` for ``(3, 1, 4, 64)``). Two saves of one
    value (``output.save("a")``, ``output.save("b")``) are such outputs.
    """
    seen: set[int] = set()
    out = {}
    for key, value in saves.items():
        if isinstance(value, mx.array):
            if id(value) in seen:
                value = mx.array(value)
            seen.add(id(value))
        out[key] = value
    return out
