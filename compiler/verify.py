"""The verifier: checks a graph is well formed and says what is wrong, where, and how to fix it."""

from __future__ import annotations

from .errors import GraphError
from .ir import Graph, Node, Op

_TARGET_KINDS = {
    Op.MODULE_OUTPUT: "a (module path, call index) pair",
    Op.MODULE_INPUT: "a (module path, call index) pair",
    Op.REPLACE: "a (module path, call index, 'output' | 'input') triple",
    Op.PARAM: "an integer index into the params list",
    Op.SAVE: "a string key",
    Op.BINARY: "an operator name",
    Op.UNARY: "an operator name",
    Op.CALL_METHOD: "a method name",
    Op.CALL_FUNCTION: "a callable",
}


def verify(graph: Graph) -> None:
    """Raise :class:`GraphError` if the graph is malformed; return ``None`` if it is sound."""
    seen: set[int] = set()
    save_keys: dict[str, Node] = {}
    for node in graph:
        _check_target(node)
        for ref in node.refs():
            if ref not in graph:
                raise GraphError(
                    f"{_where(node)} reads %{ref}, which is not in the graph; "
                    "a pass removed a node that is still used, or a value from another trace leaked in"
                )
            if ref not in seen:
                raise GraphError(f"{_where(node)} reads %{ref} before it is defined: nodes must be in order")
        if node.op is Op.SAVE:
            if node.target in save_keys:
                raise GraphError(f"{_where(node)} saves under key {node.target!r}, already used by "
                                 f"{_where(save_keys[node.target])}; save keys must be unique")
            save_keys[node.target] = node
        seen.add(node.id)
    # Every node reads only nodes defined before it (checked above), so the graph is acyclic.


def _check_target(node: Node) -> None:
    """Each op's target has a fixed form (see ``compiler.ir``)."""
    t = node.target
    ok = {
        Op.MODULE_OUTPUT: lambda: isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str),
        Op.MODULE_INPUT: lambda: isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str),
        Op.REPLACE: lambda: isinstance(t, tuple) and len(t) == 3 and t[2] in ("output", "input"),
        Op.PARAM: lambda: isinstance(t, int),
        Op.SAVE: lambda: isinstance(t, str),
        Op.BINARY: lambda: isinstance(t, str),
        Op.UNARY: lambda: isinstance(t, str),
        Op.CALL_METHOD: lambda: isinstance(t, str),
        Op.CALL_FUNCTION: lambda: callable(t),
    }.get(node.op, lambda: True)
    if not ok():
        raise GraphError(f"{_where(node)} has target {t!r}; a {node.op.value} node needs {_TARGET_KINDS[node.op]}")
    if node.op in (Op.REPLACE, Op.SAVE) and len(node.args) != 1:
        raise GraphError(f"{_where(node)} needs exactly one argument (the value), got {len(node.args)}")


def _where(node: Node) -> str:
    return f"node %{node.id} ({node.describe()}, traced at {node.source})"
