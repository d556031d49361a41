"""Constant lifting: constants become ``param`` nodes read from a params list at run time.

Needs: a verified graph. Guarantees: no ``constant`` node remains; the params are numbered ``0..n-1`` in
graph order and each carries the id of the constant it came from (``meta["constant_id"]``), so the values
for a run are read off a recorded graph by id (:func:`param_values`), never by position: a pass that
drops constants (dead-code elimination) cannot shift a value onto another param. Graphs that differ only
in values lower to the same function and share one compilation.
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


def param_sources(graph: Graph) -> tuple[int, ...]:
    """Ids of the constants a lifted graph's params come from, in param order."""
    params = sorted((n for n in graph if n.op is Op.PARAM), key=lambda n: n.target)
    return tuple(n.meta["constant_id"] for n in params)


def param_values(recorded: Graph, sources: tuple[int, ...]) -> list[mx.array]:
    """The params list for a run: the values of the constants ``sources`` names, read off ``recorded``
    (any graph with the structure the lifted graph was built from)."""
    return [as_param(recorded.node(i).meta["value"]) for i in sources]


def as_param(value: Any) -> mx.array:
    """A constant as an array; Python numbers become float32/int32 scalars (cast where used)."""
    if isinstance(value, mx.array):
        return value
    if isinstance(value, bool):
        return mx.array(value)
    if isinstance(value, int):
        return mx.array(value, dtype=mx.int32)
    return mx.array(value, dtype=mx.float32)
