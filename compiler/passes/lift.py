"""Constant lifting: constants become ``param`` nodes read from a params list at run time.

Needs: a verified graph. Guarantees: no ``constant`` node remains; param ``i`` is the value of the i-th
constant in graph order (:func:`param_values` gives that list), so graphs that differ only in values
lower to the same function and share one compilation.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from ..ir import Graph, Op


def lift_constants(graph: Graph) -> tuple[Graph, bool]:
    """Turn every constant into a param; Python numbers keep a ``weak`` flag for dtype promotion."""
    nodes, index = [], 0
    for node in graph:
        if node.op is Op.CONSTANT:
            meta = {k: v for k, v in node.meta.items() if k != "value"}
            meta["constant_id"] = node.id
            nodes.append(node.replace(op=Op.PARAM, target=index, meta=meta))
            index += 1
        else:
            nodes.append(node)
    return graph.with_nodes(nodes), index > 0


def param_values(graph: Graph) -> list[mx.array]:
    """The params list for a graph, in the order :func:`lift_constants` numbers them."""
    return [as_param(n.meta["value"]) for n in graph if n.op is Op.CONSTANT]


def as_param(value: Any) -> mx.array:
    """A constant as an array; Python numbers become float32/int32 scalars (cast where used)."""
    if isinstance(value, mx.array):
        return value
    if isinstance(value, bool):
        return mx.array(value)
    if isinstance(value, int):
        return mx.array(value, dtype=mx.int32)
    return mx.array(value, dtype=mx.float32)
