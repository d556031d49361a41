"""Digests of call arguments: the same value gives the same 64-bit digest in every process.

:func:`mlxterp.distributed.check_same_call` compares the digests of a call's arguments across ranks, so
the encoding must not depend on the process: no ``id()``, no memory addresses, no ``hash()`` of ``str``
(salted per process). Values are digested by what they are:

- numbers, strings, bytes, ``None``: their type and ``repr``; lists, tuples, ranges and dicts item by item;
- ``mx.array`` and numpy arrays: dtype, shape and every byte of the data;
- other sequences (e.g. :class:`~mlxterp.store.PromptFile`): their items, read in slices;
- dataclasses: their type and fields;
- callables (a metric function, an intervention): a Python function cannot be compared by value across
  processes, so it is digested by its qualified name, its bytecode, constants and the global names it
  uses, its default arguments and the values its closure captured (each digested as above). Two
  functions that differ only in a *global* they read (not a default or closure value) get the same
  digest; callable objects (an intervention) by their type and data attributes. A captured object that
  is not data (a model) counts by its type only: its weights are not an argument of the call.
- anything else: its type's qualified name only.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import os
import types
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

SLICE = 4096  # items of a lazy sequence read at a time
_DEPTH = 8  # nesting depth of callables digested through closures and attributes


def digest(value: Any) -> int:
    """The 64-bit digest of ``value`` (see the module docstring)."""
    h = hashlib.blake2b(digest_size=8)
    _feed(h, value, 0)
    return int.from_bytes(h.digest(), "little")


def describe(value: Any, width: int = 48) -> str:
    """A short human description of ``value`` for an error message (its kind, size and first item)."""
    if isinstance(value, (mx.array, np.ndarray)):
        return f"array of shape {tuple(value.shape)} {str(value.dtype).rsplit('.', 1)[-1]}"
    if isinstance(value, (str, bytes)):
        return _clip(repr(value), width)
    if isinstance(value, dict):
        return _clip("{" + ", ".join(f"{k}: {describe(v, 16)}" for k, v in value.items()) + "}", width)
    if callable(value) and not isinstance(value, type):
        return f"function {_qualname(value)}" if _code(value) is not None else f"{type(value).__qualname__} object"
    if isinstance(value, (list, tuple, range)) or _lazy_sequence(value):
        n = len(value)
        if n == 0 or not isinstance(value, (list, tuple, range)):
            return f"{type(value).__name__} of {n} items"
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            return _clip(repr(list(value)), width)
        return f"{n} items, the first {describe(value[0], width // 2)}"
    return _clip(repr(value) if _plain(value) else type(value).__qualname__, width)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, complex, np.generic, enum.Enum, os.PathLike))


def _lazy_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, list, tuple, range))


def _tag(h: Any, *parts: Any) -> None:
    h.update(("|".join(map(str, parts)) + ";").encode())


def _feed(h: Any, value: Any, depth: int) -> None:
    """Add ``value`` to the hasher ``h`` (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, complex, str)):
        _tag(h, type(value).__name__, repr(value))
    elif isinstance(value, bytes):
        _tag(h, "bytes", len(value))
        h.update(value)
    elif isinstance(value, np.generic):
        _feed(h, value.item(), depth)
    elif isinstance(value, mx.array):
        mx.eval(value)
        _tag(h, "mx", value.dtype, tuple(value.shape))
        data = value.view(mx.uint16) if value.dtype == mx.bfloat16 else value  # no numpy bfloat16
        h.update(np.ascontiguousarray(np.array(data)).tobytes())
    elif isinstance(value, np.ndarray):
        _tag(h, "np", value.dtype.str, value.shape)
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (mx.Dtype, enum.Enum, os.PathLike, slice, type(Ellipsis))):
        _tag(h, type(value).__name__, str(value) if not isinstance(value, slice) else "")
        if isinstance(value, slice):
            _feed(h, (value.start, value.stop, value.step), depth)
    elif isinstance(value, (list, tuple, range)):
        _tag(h, type(value).__name__, len(value))
        for item in value:
            _feed(h, item, depth)
    elif isinstance(value, dict):
        _tag(h, "dict", len(value))
        for key in sorted(value, key=repr):
            _feed(h, key, depth)
            _feed(h, value[key], depth)
    elif isinstance(value, (set, frozenset)):
        _feed(h, ("set", sorted(digest(v) for v in value)), depth)
    elif _lazy_sequence(value):
        _tag(h, "sequence", len(value))
        for start in range(0, len(value), SLICE):
            for item in value[start:start + SLICE]:
                _feed(h, item, depth)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _tag(h, "dataclass", type(value).__qualname__)
        _feed(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth)
    elif callable(value) and depth < _DEPTH:
        _feed_callable(h, value, depth + 1)
    else:
        _tag(h, "object", type(value).__module__, type(value).__qualname__)


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', None) or ''}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _code(fn: Any) -> Any:
    return getattr(getattr(fn, "__func__", fn), "__code__", None)


def _feed_callable(h: Any, fn: Any, depth: int) -> None:
    """A callable's qualified name and what Python exposes of its value (see the module docstring)."""
    if isinstance(fn, functools.partial):
        _tag(h, "partial")
        _feed(h, (fn.func, fn.args, fn.keywords), depth)
        return
    _tag(h, "callable", _qualname(fn))
    func = getattr(fn, "__func__", fn)  # a bound method: its function (and its object's attributes below)
    code = _code(fn)
    if code is not None:
        _feed_code(h, code, depth)
        _feed(h, (getattr(func, "__defaults__", None), getattr(func, "__kwdefaults__", None)), depth)
        for cell in getattr(func, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned after the function was made)
                contents = None
            _feed_captured(h, contents, depth)
    owner = getattr(fn, "__self__", None) if isinstance(fn, types.MethodType) else fn
    if owner is not None and not isinstance(owner, (types.FunctionType, types.BuiltinFunctionType, type)):
        state = getattr(owner, "__dict__", None)
        if isinstance(state, dict):
            for key in sorted(k for k in state if not k.startswith("__")):
                _tag(h, "attribute", key)
                _feed_captured(h, state[key], depth)


def _feed_captured(h: Any, value: Any, depth: int) -> None:
    """A value a function captured or an object holds: digested when it is data or a function, by its type
    otherwise (a captured model is not walked: its weights are not an argument of the call)."""
    data = (str, bytes, list, tuple, dict, range, mx.array, np.ndarray, types.FunctionType, types.MethodType,
            functools.partial)
    if _plain(value) or isinstance(value, data) and not isinstance(value, nn.Module):
        _feed(h, value, depth)
    else:
        _tag(h, "object", type(value).__module__, type(value).__qualname__)


def _feed_code(h: Any, code: types.CodeType, depth: int) -> None:
    h.update(code.co_code)
    _tag(h, "names", *code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(h, const, depth)
        else:
            _feed(h, const, depth)
