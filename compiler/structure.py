"""Structural keys: two graphs that differ only in constant values get the same key."""

from __future__ import annotations

from typing import Any, Hashable

import mlx.core as mx

from .ir import Graph, Op, Ref


def constant_signature(value: Any) -> tuple:
    """What of a constant is structure (kind, shape, dtype), never its value."""
    if isinstance(value, mx.array):
        return ("array", tuple(value.shape), str(value.dtype))
    if isinstance(value, bool):
        return ("bool",)
    if isinstance(value, (int, float)):
        return ("number", type(value).__name__)
    return ("object", type(value).__qualname__, id(value))


def _freeze(value: Any) -> Hashable:
    """A hashable form of nested args (slices are unhashable before Python 3.12)."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is Ref:
        return ("ref", value.id)
    if kind is tuple or kind is list:
        return (kind.__name__,) + tuple(_freeze(v) for v in value)
    if kind is dict:
        return ("dict",) + tuple((k, _freeze(v)) for k, v in value.items())
    if kind is slice:
        return ("slice", _freeze(value.start), _freeze(value.stop), _freeze(value.step))
    if kind is mx.array:
        return ("array", tuple(value.shape), str(value.dtype))
    if kind is mx.Dtype:
        return ("dtype", str(value))
    try:
        hash(value)
    except TypeError:
        return ("unhashable", kind.__qualname__, id(value))
    return value


_ATOMS = frozenset({int, float, str, bool, type(None), type(Ellipsis)})


def structure_key(graph: Graph) -> Hashable:
    """Hashable key of a graph's structure: ops, targets, wiring and constant signatures."""
    parts: list[Hashable] = [("captures", _freeze(graph.captures))]
    constant = Op.CONSTANT
    for node in graph:
        if node.op is constant:
            parts.append((constant, constant_signature(node.meta["value"]), node.meta.get("weak", False)))
        else:
            parts.append((node.op, _freeze(node.target), _freeze(node.args), _freeze(node.kwargs) if node.kwargs else ()))
    return tuple(parts)
