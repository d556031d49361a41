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


def verify(graph: Graph, origin: Graph | None = None) -> None:
    """Raise :class:`GraphError` if the graph is malformed; return ``None`` if it is sound.

    ``origin``: the recorded graph a pass result came from; each param must then name one of its
    constants (the value a run binds to the param is read from there by that id).
    """
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
    _check_params(graph, origin)


def _check_params(graph: Graph, origin: Graph | None) -> None:
    """Params are numbered exactly ``0..n-1``, each once, and each names its source constant."""
    params = [n for n in graph if n.op is Op.PARAM]
    indices = sorted(n.target for n in params)
    if indices != list(range(len(params))):
        raise GraphError(f"the graph's params are numbered {indices}; they must be exactly 0..{len(params) - 1}, "
                         "each once (a pass renumbered or duplicated a param)")
    sources: dict[int, Node] = {}
    for node in params:
        source = node.meta.get("constant_id")
        if not isinstance(source, int):
            raise GraphError(f"{_where(node)} does not name the constant it came from (meta['constant_id']); "
                             "params must be made by the constant-lifting pass")
        if source in sources:
            raise GraphError(f"{_where(node)} and {_where(sources[source])} both read constant %{source}")
        sources[source] = node
        if origin is not None and (source not in origin or origin.node(source).op is not Op.CONSTANT):
            raise GraphError(f"{_where(node)} names constant %{source}, which is not a constant of the "
                             "recorded graph: its value could not be bound")


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
