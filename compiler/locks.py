"""One lock per model: forwards of one model run one at a time, forwards of different models concurrently.

A traced forward changes the model while it runs: hooked modules carry a swapped class, and while
``mx.compile`` traces, the model's arrays are placeholders (see :mod:`.state_compile`). Another thread's
forward of the same model at that moment would run through the first one's hooks or read placeholders.
Everything that runs a forward of a model, or builds a graph from its weights, holds that model's lock.
The lock is re-entrant: a trace inside an analysis helper, or inside a compiled program, takes it again.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Callable, TypeVar

import mlx.nn as nn

F = TypeVar("F", bound=Callable[..., Any])

# id(model) -> (weak reference to the model, its lock). Modules are dicts (unhashable), so they cannot key a
# WeakKeyDictionary; the weak reference's callback drops the entry when the model is freed.
_LOCKS: dict[int, tuple[weakref.ref, threading.RLock]] = {}
_REGISTRY = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises forwards of ``model``."""
    key = id(model)
    entry = _LOCKS.get(key)
    if entry is not None and entry[0]() is model:
        return entry[1]
    with _REGISTRY:
        entry = _LOCKS.get(key)
        if entry is None or entry[0]() is not model:  # absent, or a freed model's id reused
            entry = (weakref.ref(model, functools.partial(_forget, key)), threading.RLock())
            _LOCKS[key] = entry
        return entry[1]


def share_lock(model: nn.Module, like: nn.Module) -> threading.RLock:
    """Make ``model`` use ``like``'s lock, and return it. For module trees that share modules (a copy of a
    tree along some paths, the rest shared): a forward of either hooks and, while ``mx.compile`` traces,
    swaps the arrays of the modules they share, so their forwards must not run at the same time."""
    lock = model_lock(like)
    with _REGISTRY:
        _LOCKS[id(model)] = (weakref.ref(model, functools.partial(_forget, id(model))), lock)
    return lock


def _forget(key: int, ref: weakref.ref) -> None:
    with _REGISTRY:
        if key in _LOCKS and _LOCKS[key][0] is ref:
            del _LOCKS[key]


def serialised(model_of: Callable[[Any], nn.Module]) -> Callable[[F], F]:
    """Decorate a function whose first argument leads to a model (``model_of(first)``): it runs holding that
    model's lock (e.g. ``@serialised(lambda executor: executor.model)``)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def locked(first: Any, *args: Any, **kwargs: Any) -> Any:
            with model_lock(model_of(first)):
                return fn(first, *args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
