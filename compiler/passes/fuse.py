"""Fusion: merge chains of elementwise nodes into one ``fused`` node.

A chain link is an elementwise node whose value has exactly one reader, itself elementwise and not a
side effect. Each group becomes one node whose target is a micro-program, which the lowering runs as
one function (under ``mx.compile`` in eager mode too, so the chain becomes one kernel).

Needs: a verified graph. Guarantees: same values; saved or written values are never fused away.
"""

from __future__ import annotations

from typing import Any

from ..ir import Graph, Node, Op, Ref
from ..semantics import is_elementwise


def fuse_elementwise(graph: Graph) -> tuple[Graph, bool]:
    """Merge single-reader chains of elementwise nodes."""
    users = graph.users()
    group_of: dict[int, int] = {}  # node id -> id of the group's last node
    for node in reversed(graph.nodes):
        if not is_elementwise(node) or node.op is Op.FUSED or not _flat(node):
            continue
        readers = users.get(node.id, [])
        head = readers[0] if len(readers) == 1 else None
        if head is not None and head in group_of:
            group_of[node.id] = group_of[head]
        else:
            group_of[node.id] = node.id
    groups: dict[int, list[Node]] = {}
    for node in graph:
        if node.id in group_of:
            groups.setdefault(group_of[node.id], []).append(node)
    fusable = {last: members for last, members in groups.items() if len(members) > 1}
    if not fusable:
        return graph, False
    member_to_last = {m.id: last for last, members in fusable.items() for m in members}
    nodes = []
    for node in graph:
        last = member_to_last.get(node.id)
        if last is None:
            nodes.append(node)
        elif node.id == last:
            nodes.append(_fused_node(fusable[last]))
    return graph.with_nodes(nodes), True


def _flat(node: Node) -> bool:
    """Only nodes whose refs are whole arguments fuse (no refs nested in lists or slices)."""
    top = sum(isinstance(a, Ref) for a in (*node.args, *node.kwargs.values()))
    return top == len(node.refs())


def _fused_node(members: list[Node]) -> Node:
    """One node computing the chain ``members`` (in order); the last member's id is kept."""
    position = {m.id: i for i, m in enumerate(members)}
    inputs: list[Ref] = []

    def local(ref: Ref) -> Any:
        if ref.id in position:
            return ("v", position[ref.id])
        if ref not in inputs:
            inputs.append(ref)
        return ("in", inputs.index(ref))

    steps = []
    for m in members:
        args = tuple(local(a) if isinstance(a, Ref) else _wrap_literal(a) for a in m.args)
        kwargs = tuple((k, local(v) if isinstance(v, Ref) else _wrap_literal(v)) for k, v in m.kwargs.items())
        steps.append((m.op.value, m.target, args, kwargs))
    last = members[-1]
    meta = dict(last.meta, fused=[m.describe() for m in members], sources=[m.source for m in members])
    return Node(last.id, Op.FUSED, tuple(steps), tuple(inputs), {}, meta)


def _wrap_literal(value: Any) -> Any:
    """Mark literals that could be mistaken for micro-program refs."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("in", "v"):
        return value
    if isinstance(value, tuple):
        return ("lit", value)
    return value
