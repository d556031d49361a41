"""Structural keys: two graphs that differ only in constant values get the same key."""

from __future__ import annotations

from typing import Any, Hashable

import mlx.core as mx

from .ir import Graph, Node, Op, Ref


def constant_signature(value: Any) -> tuple:
    """What of a constant is structure (kind, shape, dtype), never its value."""
    if isinstance(value, mx.array):
        return ("array", tuple(value.shape), value.dtype)  # the Dtype itself: hashable, and str() is slow
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
        return ("array", tuple(value.shape), value.dtype)  # the Dtype itself: hashable, and str() is slow
    if kind is mx.Dtype:
        return ("dtype", str(value))
    try:
        hash(value)
    except TypeError:
        return ("unhashable", kind.__qualname__, id(value))
    return value


_ATOMS = frozenset({int, float, str, bool, type(None), type(Ellipsis)})


def node_key(node: Node) -> Hashable:
    """Hashable structure of one node: op, target, wiring and constant signatures (never values).

    The op appears as its string value (``Op`` members hash through a Python-level ``Enum.__hash__``,
    and keys are hashed on every cache lookup).
    """
    if node.op is Op.CONSTANT:
        return ("constant", constant_signature(node.meta["value"]), node.meta.get("weak", False))
    return (node.op._value_, _freeze(node.target), _freeze(node.args), _freeze(node.kwargs) if node.kwargs else ())


def structure_key(graph: Graph) -> Hashable:
    """Hashable key of a graph's structure: its captures and every node's :func:`node_key`
    (taken from ``graph.known_keys`` where the recorder supplied it)."""
    known = graph.known_keys
    head = (("captures", _freeze(graph.captures)),)
    if len(known) == len(graph):  # a recorder supplied every key, in node order
        return head + tuple(known.values())
    return head + tuple(known.get(node.id) or node_key(node) for node in graph)
