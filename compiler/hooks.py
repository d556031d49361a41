"""Interception by class swap: a hooked module's instance gets a cached subclass whose ``__call__``
hands control to the active runtime. Names, parameters, ``isinstance`` and weight loading stay intact,
and the original class is restored in ``finally``, whatever happens.
"""

from __future__ import annotations

import contextlib
import inspect
from threading import get_ident
from typing import Any, Callable, Iterable, Iterator, Protocol

import mlx.nn as nn

_HOOKED_CLASSES: dict[type, type] = {}
# id(module) -> (path, runtime, id of the thread running it). Kept outside the module: nn.Module is a dict
# and would store it as state. A hooked module called from another thread (a plain forward while a trace
# runs) behaves normally: the runtime belongs to the thread that installed it.
_ACTIVE: dict[int, tuple[str, "Runtime", int]] = {}


class Runtime(Protocol):
    """What a hooked ``__call__`` hands control to."""

    def call(self, path: str, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        """Run ``original(module, *args, **kwargs)`` with this runtime's work around it."""


def hooked_class(cls: type) -> type:
    """The cached subclass of ``cls`` whose ``__call__`` defers to the active runtime."""
    sub = _HOOKED_CLASSES.get(cls)
    if sub is None:
        original = cls.__call__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            entry = _ACTIVE.get(id(self))
            if entry is None or entry[2] != get_ident():  # outside any runtime, or another thread's: behave normally
                return original(self, *args, **kwargs)
            return entry[1].call(entry[0], self, original, args, kwargs)

        sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__, "__mlxterp_hooked__": True})
        _HOOKED_CLASSES[cls] = sub
    return sub


@contextlib.contextmanager
def hooks_installed(modules: Iterable[tuple[str, nn.Module]], runtime: Runtime) -> Iterator[None]:
    """Hook each ``(path, module)`` for the duration of the block; restore classes in ``finally``."""
    swapped: list[tuple[nn.Module, type]] = []
    thread = get_ident()
    try:
        for path, module in modules:
            active = _ACTIVE.get(id(module))
            if active is not None and active[1] is runtime:
                continue  # one module reachable at two paths: the first path names it
            if active is not None:
                raise RuntimeError(
                    f"module {path or '<model>'} is already hooked by another running forward: a trace of a "
                    "model cannot run while that model's forward runs (e.g. from inside one of its interventions), "
                    "nor can two models that share this module run at once"
                )
            cls = type(module)
            _ACTIVE[id(module)] = (path, runtime, thread)
            module.__class__ = hooked_class(cls)
            swapped.append((module, cls))
        yield
    finally:
        for module, cls in reversed(swapped):
            module.__class__ = cls
            _ACTIVE.pop(id(module), None)


_FIRST_PARAMETER: dict[Callable, str | None] = {}


def first_parameter(fn: Callable) -> str | None:
    """Name of the first parameter after ``self`` of a module's ``__call__`` (cached per function)."""
    try:
        return _FIRST_PARAMETER[fn]
    except KeyError:
        pass
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]
    except (TypeError, ValueError):  # a builtin without a signature
        params = []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    name = params[0].name if params and params[0].kind in kinds else None
    _FIRST_PARAMETER[fn] = name
    return name


def primary_input(original: Callable, args: tuple, kwargs: dict) -> Any:
    """What a module call receives as its input: its first positional argument, or, when the caller passed
    it by name (GPT-J calls ``block(inputs=h, mask=mask)``), the keyword argument for the first parameter
    of ``original``'s signature. ``None`` if the call has neither."""
    if args:
        return args[0]
    if kwargs:
        name = first_parameter(original)
        if name is not None:
            return kwargs.get(name)
    return None


def with_primary_input(original: Callable, args: tuple, kwargs: dict, value: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the input (see :func:`primary_input`) replaced by ``value``."""
    if args:
        return (value,) + tuple(args[1:]), kwargs
    return args, {**kwargs, first_parameter(original): value}


def is_hooked(module: nn.Module) -> bool:
    """Whether ``module`` currently carries a hook class (used by restoration tests)."""
    return "__mlxterp_hooked__" in type(module).__dict__
