"""Proxies: stand-ins for values inside a trace. Operations on them record graph nodes; after the
trace they stand for the computed array (shape, indexing, arithmetic, ``mx.array(p)``, numpy)."""

from __future__ import annotations

import operator
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from mlxterp.compiler import Op, Ref


_UNSET = object()
_ATTRGETTERS: dict[str, Callable] = {}


class Proxy:
    """A value in a trace (nnsight's ``OutputProxy``). ``.save()`` keeps it; after the block the proxy
    behaves as the saved ``mx.array`` (and saved proxies in the caller's frame are replaced by it)."""

    __slots__ = ("_trace", "_node", "_binding", "_value", "_save_key", "__weakref__")

    def __init__(self, trace: Any, node_id: int, binding: tuple | None = None):
        self._trace = trace
        self._node = node_id
        self._binding = binding  # (path, call_idx, phase) when this stands for a module's output/input
        self._value = _UNSET
        self._save_key: str | None = None

    # -- recording -------------------------------------------------------------------------------
    def _record(self, op: Op, target: Any, args: tuple, kwargs: dict | None = None) -> "Proxy":
        return self._trace.record(op, target, args, kwargs)

    def save(self, name: str | None = None) -> "Proxy":
        """Keep this value: it is returned after the trace (``trace.get(key)``, ``trace.saved_values``)."""
        if self._value is not _UNSET:
            return self
        self._trace.save(self, name)
        return self

    def _bound(self) -> Any:
        if self._value is _UNSET:
            state = "was never saved (call .save() in the block)" if self._trace.finished else "is not computed yet"
            raise RuntimeError(f"this traced value {state}; {self._describe()}")
        return self._value

    def _describe(self) -> str:
        node = self._trace.graph.node(self._node)
        return f"node %{node.id} {node.describe()} traced at {node.source}"

    @property
    def value(self) -> Any:
        """The computed array (after the trace, for saved values)."""
        return self._bound()

    # -- shape information (real during tracing, from a lazily built forward) --------------------
    @property
    def shape(self) -> tuple:
        """The value's shape, known while tracing (from one lazy forward per input shape) and after."""
        return tuple(self._value.shape) if self._value is not _UNSET else tuple(self._trace.abstract(self._node).shape)

    @property
    def dtype(self) -> Any:
        """The value's ``mx.Dtype``, known while tracing and after."""
        return self._value.dtype if self._value is not _UNSET else self._trace.abstract(self._node).dtype

    @property
    def ndim(self) -> int:
        """The number of axes, ``len(shape)``."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of elements, the product of ``shape``."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    # -- indexing --------------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> Any:
        if self._value is not _UNSET:
            return self._value[_unwrap(index)]
        return self._trace.getitem(self, index)

    def __setitem__(self, index: Any, value: Any) -> None:
        if self._value is not _UNSET:
            self._value[_unwrap(index)] = _unwrap(value)
            return
        self._trace.setitem(self, index, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._value is not _UNSET:
            return getattr(self._value, name)
        if self._binding is not None:  # a dictionary spliced at this site, by its name (see .attached)
            found = self._trace.attached(self._binding, name)
            if found is not None:
                return found
        attr = getattr(mx.array, name, None)
        if attr is None:
            attached = self._trace.attached_names()
            hint = f"; the dictionaries spliced in this trace are {', '.join(attached)}" if attached else ""
            raise AttributeError(f"a traced value has no attribute {name!r}; mx.array methods such as "
                                 f"reshape, sum, mean, astype, transpose, max, min are recorded{hint}")
        if isinstance(attr, property) or not callable(attr):
            getter = _ATTRGETTERS.setdefault(name, operator.attrgetter(name))
            return self._record(Op.CALL_FUNCTION, getter, (self,))
        return lambda *args, **kwargs: self._record(Op.CALL_METHOD, name, (self, *args), kwargs)

    # -- conversions (after the trace) -----------------------------------------------------------
    def __mlx_array__(self) -> mx.array:
        if self._value is _UNSET and not self._trace.finished:
            raise TypeError(
                "an MLX function or operator received a traced value inside a trace; MLX cannot record it. "
                "Use mlxterp.apply(fn, ...) (e.g. apply(mx.tanh, h)) and put the traced value on the left of "
                f"operators with arrays (h + arr, not arr + h); {self._describe()}")
        return self._bound()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = np.array(self._bound())
        return arr if dtype is None else arr.astype(dtype)

    def __bool__(self) -> bool:
        if self._value is _UNSET:
            raise TypeError(f"a traced value has no truth value until the trace runs; {self._describe()}")
        return bool(self._value)

    def __iter__(self):
        return iter(self._bound())

    def __float__(self) -> float:
        return float(self._bound().item())

    def __int__(self) -> int:
        return int(self._bound().item())

    def __hash__(self) -> int:
        return object.__hash__(self)

    def __repr__(self) -> str:
        if self._value is not _UNSET:
            return repr(self._value)
        return f"<Proxy {self._describe()}>"


def _make_binary(name: str, reflected: bool) -> Callable:
    fn = getattr(operator, name if name not in ("and", "or") else name + "_")

    def method(self: Proxy, other: Any) -> Any:
        if self._value is not _UNSET:
            a, b = (_unwrap(other), self._value) if reflected else (self._value, _unwrap(other))
            return fn(a, b)
        return self._trace.binary(name, other, self) if reflected else self._trace.binary(name, self, other)

    return method


def _make_unary(name: str) -> Callable:
    fn = getattr(operator, name)

    def method(self: Proxy) -> Any:
        if self._value is not _UNSET:
            return fn(self._value)
        return self._record(Op.UNARY, name, (self,))

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(Proxy, f"__{_name}__", _make_binary(_name, False))
    setattr(Proxy, f"__r{_name}__", _make_binary(_name, True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Proxy, f"__{_name}__", _make_binary(_name, False))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Proxy, f"__{_name}__", _make_unary(_name))


def _unwrap(value: Any) -> Any:
    """Replace bound proxies (after a trace) by their arrays, inside nested structures too."""
    if isinstance(value, Proxy):
        return value._bound()
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def find_trace(value: Any) -> Any:
    """The trace of the first unbound proxy inside ``value`` (nested), or ``None``."""
    if isinstance(value, Proxy):
        return value._trace if value._value is _UNSET else None
    if isinstance(value, (tuple, list)):
        for v in value:
            t = find_trace(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        return find_trace(tuple(value.values()))
    return None


def apply(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)``; inside a trace, with proxies among the arguments, record the call
    instead (e.g. ``mlxterp.apply(mx.tanh, model.layers[3].output)``)."""
    if not callable(fn):
        raise TypeError(f"apply needs a callable as its first argument, got {type(fn).__name__} {fn!r}")
    trace = find_trace((args, kwargs))
    if trace is None:
        return fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
    return trace.record(Op.CALL_FUNCTION, fn, args, kwargs)


__all__ = ["Proxy", "apply", "find_trace", "Ref"]
