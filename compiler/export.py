"""Graph introspection: a readable text dump, Graphviz DOT, and JSON."""

from __future__ import annotations

import json
from typing import Any

import mlx.core as mx

from .ir import Graph, Node, Op, Ref, target_name


def _fmt(value: Any) -> str:
    if isinstance(value, Ref):
        return repr(value)
    if isinstance(value, slice):
        parts = ["" if v is None else _fmt(v) for v in (value.start, value.stop, value.step)]
        return ":".join(parts[:2] if value.step is None else parts)
    if value is Ellipsis:
        return "..."
    if isinstance(value, mx.array):
        return f"array{tuple(value.shape)}:{str(value.dtype).replace('mlx.core.', '')}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) + "}"
    if callable(value):
        return target_name(value)
    return repr(value)


def node_line(node: Node) -> str:
    """One line for a node: ``%3 = binary[mul](%1, %2)    # file.py:12``."""
    if node.op is Op.CONSTANT:
        body = f"constant({_fmt(node.meta.get('value'))})"
    else:
        args = [_fmt(a) for a in node.args] + [f"{k}={_fmt(v)}" for k, v in node.kwargs.items()]
        body = f"{node.describe()}({', '.join(args)})"
    return f"%{node.id} = {body}    # {node.source}"


def to_text(graph: Graph) -> str:
    """A readable listing of the graph, one node per line."""
    lines = [f"graph ({len(graph)} nodes, captures={_fmt(graph.captures) if graph.captures != 'all' else 'all'}):"]
    lines += ["  " + node_line(n) for n in graph]
    return "\n".join(lines)


def to_dot(graph: Graph, name: str = "trace") -> str:
    """Graphviz DOT source: nodes labelled by op/target, edges for data flow, side effects boxed."""
    out = [f"digraph {json.dumps(name)} {{", "  rankdir=TB;"]
    for n in graph:
        shape = "box" if n.op in (Op.SAVE, Op.REPLACE) else "ellipse"
        label = json.dumps(f"%{n.id} {n.describe()}")
        out.append(f"  n{n.id} [label={label}, shape={shape}];")
    for n in graph:
        for r in n.refs():
            out.append(f"  n{r} -> n{n.id};")
    out.append("}")
    return "\n".join(out)


def to_json(graph: Graph) -> str:
    """JSON with one object per node (id, op, target, inputs, args, source)."""
    nodes = [
        {
            "id": n.id,
            "op": n.op.value,
            "target": target_name(n.target) if n.target is not None else None,
            "inputs": n.refs(),
            "args": _fmt(n.args),
            "kwargs": _fmt(n.kwargs),
            "source": n.source,
        }
        for n in graph
    ]
    captures = graph.captures if graph.captures == "all" else [list(c) for c in graph.captures]
    return json.dumps({"captures": captures, "nodes": nodes}, indent=2)
