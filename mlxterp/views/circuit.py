"""The circuit view: the best edges of an :class:`~mlxterp.circuits.EdgeScores` drawn as a graph laid out by
layer (senders and receivers where :meth:`~mlxterp.circuits.CircuitGraph.position` puts them), each edge's
width and colour by the square root of its absolute score (red positive, blue negative); hover shows an edge's
score and rank, or a node's score (the sum of its edges); a slider sets how many of the best edges are drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

import numpy as np

from .page import Page, origin_lines

if TYPE_CHECKING:
    from ..circuits.edges import EdgeScores


def edges_page(scores: EdgeScores, *, n_edges: int = 50, max_edges: int = 1000) -> Page:
    """The page of edge scores.

    Args:
        scores: the edge scores.
        n_edges: edges drawn when the page opens (the slider's start).
        max_edges: the best edges the page holds (the slider's end).

    Raises:
        ValueError: ``n_edges`` or ``max_edges`` is not a positive int, or ``n_edges > max_edges``.
    """
    for name, value in (("n_edges", n_edges), ("max_edges", max_edges)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if n_edges > max_edges:
        raise ValueError(f"n_edges: {n_edges} edges drawn, but the page holds max_edges={max_edges}")
    graph = scores.graph
    ranked = scores.ranking()[:max_edges]
    index: Dict[str, int] = {}
    nodes: List[list] = []
    edges = []
    senders, receivers = graph.senders, graph.receivers
    for rank, flat in enumerate(ranked):
        r, u = divmod(int(flat), graph.n_senders)
        ends = [_node(senders[u], "sender", graph, index, nodes), _node(receivers[r], "receiver", graph, index, nodes)]
        edges.append(ends + [float(scores.scores[r, u]), rank + 1])
    out_sums, in_sums = scores.scores.sum(axis=0), scores.scores.sum(axis=1)
    sums = {**{n: float(v) for n, v in zip(senders, out_sums)}, **{n: float(v) for n, v in zip(receivers, in_sums)}}
    for node in nodes:
        node.append(sums[node[0]])
    header = origin_lines(scores.provenance, ("Clean", "Corrupted")) + [
        ("Method", f"{scores.method} ({scores.steps} step{'s' if scores.steps != 1 else ''}), receivers "
                   f"{graph.granularity!r}"),
        ("Metric", f"{scores.metric}: clean {scores.clean:.6g}, corrupted {scores.corrupted:.6g}"),
        ("Edges", f"the best {len(edges)} of {graph.n_edges} by |score|; width by sqrt |score|, red positive, blue "
                  "negative; hover for the scores")]
    scale = float(np.abs(scores.scores.ravel()[ranked]).max()) if len(ranked) else 0.0
    return Page(f"Edge attribution ({scores.method})", header, "circuit",
                {"layers": graph.n_layers, "heads": graph.n_heads, "nodes": nodes, "edges": edges,
                 "total": graph.n_edges, "shown": min(int(n_edges), len(edges)), "scale": scale},
                height=min(1000, 320 + 36 * graph.n_layers))


def _node(name: str, role: str, graph, index: Dict[str, int], nodes: List[list]) -> int:
    """The index of node ``name`` in ``nodes`` (added, with its role and position, when first met)."""
    key = f"{role}:{name}"  # an MLP is a sender and a receiver: two nodes
    if key not in index:
        x, y = graph.position(name, receiver=role == "receiver")
        index[key] = len(nodes)
        nodes.append([name, role, x, y])
    return index[key]
