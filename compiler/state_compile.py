"""``mx.compile`` over a function that calls a model, with the model's state as an implicit input.

Weight edits are then seen on every call instead of being baked in as constants, and fresh random
numbers are drawn on every call. While MLX traces (the first call for a given input shape), the arrays of
the implicit inputs are swapped for placeholders; if tracing raises, MLX leaves them there, so every array
is put back and the half-traced function is dropped.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn

from .locks import model_lock


class StateCompiled:
    """``fn`` compiled with ``module.state`` and the random state as implicit inputs (see module doc).

    Calls hold the module's lock (:func:`.locks.model_lock`): no other thread may run the module while its
    arrays are placeholders. MLX keeps compiled traces per thread, so a thread's first call traces again
    and is guarded like the very first one.
    """

    def __init__(self, fn: Callable, module: nn.Module):
        self.fn = fn
        self.module = module
        self.calls = 0
        self._compiled = self._compile()
        self._generation = 0  # bumped when the compiled function is rebuilt: every thread traces it again
        self._traced = threading.local()  # .generation: the one this thread's MLX compile cache holds

    def _compile(self) -> Callable:
        return mx.compile(self.fn, inputs=[self.module.state, mx.random.state], outputs=[mx.random.state])

    def __call__(self, *args: Any) -> Any:
        with model_lock(self.module):
            if getattr(self._traced, "generation", None) == self._generation:  # traced (caches key by shape)
                return self._compiled(*args)
            saved = array_slots(self.module.state) + array_slots(mx.random.state)
            try:
                out = self._compiled(*args)
            except BaseException:
                for container, key, value in saved:
                    container[key] = value
                self._compiled = self._compile()
                self._generation += 1
                raise
            self.calls += 1
            self._traced.generation = self._generation
            return out


def array_slots(tree: Any) -> list[tuple[Any, Any, mx.array]]:
    """Every array in a tree of dicts/lists (modules are dicts) with the container and key holding it."""
    slots: list[tuple[Any, Any, mx.array]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, mx.array):
                slots.append((node, key, value))
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return slots
