"""Constant lifting: constants become ``param`` nodes read from a params list at run time.

Needs: a verified graph. Guarantees: no ``constant`` node remains; param ``i`` is the i-th remaining
constant in graph order and keeps that constant's id in ``meta["constant_id"]``, so graphs that differ only
in values lower to the same function and share one compilation. Params are read from a recorded graph by
those ids (:func:`param_ids`, :func:`param_values`): an earlier pass may have dropped constants, so a
position in the recorded graph is not a param index.
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


def param_ids(lowered: Graph) -> tuple[int, ...]:
    """The recorded constant ids of a lifted graph's params, in param order."""
    params = sorted((n.target, n.meta["constant_id"]) for n in lowered if n.op is Op.PARAM)
    return tuple(constant_id for _, constant_id in params)


def param_values(graph: Graph, ids: tuple[int, ...] | None = None) -> list[mx.array]:
    """The params list for a recorded graph: the values of the constants ``ids`` (see :func:`param_ids`),
    or of every constant in graph order when ``ids`` is None (a graph lifted without dead code removed)."""
    if ids is None:
        return [as_param(n.meta["value"]) for n in graph if n.op is Op.CONSTANT]
    return [as_param(graph.node(i).meta["value"]) for i in ids]


def as_param(value: Any) -> mx.array:
    """A constant as an array; Python numbers become float32/int32 scalars (cast where used)."""
    if isinstance(value, mx.array):
        return value
    if isinstance(value, bool):
        return mx.array(value)
    if isinstance(value, int):
        return mx.array(value, dtype=mx.int32)
    return mx.array(value, dtype=mx.float32)
