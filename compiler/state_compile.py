"""``mx.compile`` over a function that calls a model, with the model's state as an implicit input.

Weight edits are then seen on every call instead of being baked in as constants, and fresh random
numbers are drawn on every call. While MLX traces (the first call for a given input shape), the arrays of
the implicit inputs are swapped for placeholders; if tracing raises, MLX leaves them there, so every array
is put back and the half-traced function is dropped. MLX traces again for each new input shape, so the
guard is kept for every call whose shapes were not seen before.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn

from .locks import model_lock

log = logging.getLogger(__name__)
_SERIALS = itertools.count()  # see StateCompiled._compile
_TRACING = threading.local()  # .count: traces MLX has made in this thread (see StateCompiled._first_call)


class StateCompiled:
    """``fn`` compiled with ``module.state`` and the random state as implicit inputs (see module doc).

    Calls hold the module's lock (:func:`.locks.model_lock`): no other thread may run the module while its
    arrays are placeholders. MLX keeps compiled traces per thread, so a thread's first call traces again
    and is guarded like the very first one. With ``stats``, every trace MLX makes of ``fn`` adds one to
    ``stats["traces"]``.
    """

    def __init__(self, fn: Callable, module: nn.Module, stats: collections.Counter | None = None):
        self.fn = fn if stats is None else _counting(fn, stats)
        self.module = module
        self._lock = model_lock(module)
        self.calls = 0
        self._compiled = self._compile()
        self._generation = 0  # bumped when the compiled function is rebuilt: every thread traces it again
        # .generation: the one this thread's MLX compile cache holds; .seen: input signatures it traced
        self._traced = threading.local()

    def _compile(self) -> Callable:
        # MLX caches compiled traces by the address of the Python function it was given (per thread). A
        # function freed while another thread's cache still holds its trace can have its address reused by a
        # new one, which would then be served the old trace. A process-unique serial passed as a constant
        # argument is part of MLX's cache match, so an entry left by another function never matches this one.
        # (Seen here: a compiled trace after other threads' traces returned another program's logits.)
        fn, serial = self.fn, next(_SERIALS)

        def traced(_serial: int, *args: Any) -> Any:
            _TRACING.count = getattr(_TRACING, "count", 0) + 1  # MLX calls this only while it traces
            return fn(*args)

        compiled = mx.compile(traced, inputs=[self.module.state, mx.random.state], outputs=[mx.random.state])
        return lambda *args: compiled(serial, *args)

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            signature = input_signature(args)
            seen = self._seen_here()
            if signature in seen:  # this thread traced these shapes already: MLX will not trace again
                self.calls += 1
                return self._compiled(*args)
            out, traced = self._first_call(args)
            if not traced:
                # MLX answered a call it has not traced for this function from its cache: a trace of some other
                # function (see _compile). Never return that result: rebuild, and the call traces.
                log.warning("mx.compile served a first call of %r from its cache without tracing it; "
                            "recompiled and ran it again", self.fn)
                self._rebuild()
                out, traced = self._first_call(args)
                if not traced:
                    raise RuntimeError(f"mx.compile did not trace the first call of {self.fn!r} after a rebuild; "
                                       "its result could belong to another function, so none is returned")
            self._seen_here().add(signature)  # (of the current compiled function, if it was rebuilt)
            self.calls += 1
            return out

    def _first_call(self, args: tuple) -> tuple[Any, bool]:
        """A call MLX should trace, and whether it did (a counter, so that a nested compiled call tracing
        inside this one cannot stand in for it); the implicit inputs are put back if tracing raises."""
        saved = array_slots(self.module.state) + array_slots(mx.random.state)
        before = getattr(_TRACING, "count", 0)
        try:
            out = self._compiled(*args)
            return out, getattr(_TRACING, "count", 0) != before
        except BaseException:
            for container, key, value in saved:
                container[key] = value
            self._rebuild()
            raise

    def _rebuild(self) -> None:
        """A new compiled function (a new serial): every thread traces it again."""
        self._compiled = self._compile()
        self._generation += 1

    def _seen_here(self) -> set:
        """Input signatures this thread has traced for the current compiled function."""
        local = self._traced
        if getattr(local, "generation", None) != self._generation:
            local.generation, local.seen = self._generation, set()
        return local.seen


def input_signature(args: Any) -> tuple:
    """Shapes and dtypes of the arrays in nested args (what makes ``mx.compile`` trace again), with the
    structure and the non-array leaves."""
    kind = type(args)
    if kind is mx.array:
        return (args.shape, args.dtype)
    if kind is list or kind is tuple:  # the common case, flat arrays, without a recursive call each
        return (kind,) + tuple((a.shape, a.dtype) if type(a) is mx.array else input_signature(a) for a in args)
    if kind is dict:
        return (dict,) + tuple((k, input_signature(v)) for k, v in args.items())
    return (kind, args) if kind in (int, float, bool, str, type(None)) else (kind,)


def _counting(fn: Callable, stats: collections.Counter) -> Callable:
    def traced(*args: Any) -> Any:
        stats["traces"] += 1  # runs only while mx.compile traces: counting here counts retraces exactly
        return fn(*args)

    return traced


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
