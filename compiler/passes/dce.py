"""Dead-code elimination: drop nodes no save or write depends on.

Needs: a verified graph. Guarantees: every ``save`` and ``replace`` node survives, with all it reads.
"""

from __future__ import annotations

from ..ir import SIDE_EFFECT_OPS, Graph


def eliminate_dead_code(graph: Graph) -> tuple[Graph, bool]:
    """Remove nodes whose values reach no side-effecting node."""
    live: set[int] = set()
    for node in reversed(graph.nodes):
        if node.op in SIDE_EFFECT_OPS or node.id in live:
            live.add(node.id)
            live.update(node.refs())
    kept = [n for n in graph if n.id in live]
    return graph.with_nodes(kept), len(kept) != len(graph)
