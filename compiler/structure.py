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
        return constant_key(node.meta["value"], node.meta.get("weak", False), node.meta.get("name"))
    return (node.op._value_, _freeze(node.target), _freeze(node.args), _freeze(node.kwargs) if node.kwargs else ())


# Keys of common nodes built directly from their parts. A recorder calls these instead of writing the key
# format itself (each returns exactly what node_key computes for that node; a property test checks it),
# so the format has one owner and a cache hit always means the same structure.
_REF_KEYS: dict[int, tuple] = {}


def ref_key(node_id: int) -> tuple:
    """The key of a reference to node ``node_id`` (shared: refs recur in every trace of a sweep)."""
    key = _REF_KEYS.get(node_id)
    if key is None:
        key = _REF_KEYS[node_id] = ("ref", node_id)
    return key


def refs_key(op: Op, target: str, ref_ids: tuple[int, ...]) -> tuple:
    """Key of a node with a string target whose args are references and which has no kwargs."""
    return (op._value_, target, ("tuple",) + tuple(ref_key(i) for i in ref_ids), ())


def module_key(op: Op, path: str, call_idx: int) -> tuple:
    """Key of a ``module_output`` / ``module_input`` node."""
    return (op._value_, ("tuple", path, call_idx), ("tuple",), ())


def replace_key(path: str, call_idx: int, phase: str, value_id: int) -> tuple:
    """Key of a ``replace`` node writing node ``value_id``."""
    return (Op.REPLACE._value_, ("tuple", path, call_idx, phase), ("tuple", ref_key(value_id)), ())


def save_key(name: str, value_id: int) -> tuple:
    """Key of a ``save`` node keeping node ``value_id`` under ``name``."""
    return (Op.SAVE._value_, name, ("tuple", ref_key(value_id)), ())


def constant_key(value: Any, weak: bool, name: str | None = None) -> tuple:
    """Key of a ``constant`` node: its signature (never its value) and, for a named program input, its name
    (programs of one structure share the names of their params)."""
    base = ("constant", constant_signature(value), weak)
    return base if name is None else base + (name,)


def structure_key(graph: Graph) -> Hashable:
    """Hashable key of a graph's structure: its captures and every node's :func:`node_key`
    (taken from ``graph.known_keys`` where the recorder supplied it)."""
    known = graph.known_keys
    head = (("captures", _freeze(graph.captures)),)
    if len(known) == len(graph):  # a recorder supplied every key, in node order
        return head + tuple(known.values())
    return head + tuple(known.get(node.id) or node_key(node) for node in graph)
