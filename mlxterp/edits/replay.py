"""Replaying a recorded edit into a trace: every node again, through the trace's own recording calls.

A recorded edit (``with model.edit() as ed:``) has no prompt. At the start of each trace of the edited
model its nodes are recorded again, in order, by the same calls a user's code makes (``module_value``,
``write``, ``getitem``, ``record``, ``param``), so that:

- a module read gives the trace's current value there (after the edits replayed before it: edits compose
  in order), and a write is an ordinary write (later writes in the trace, and ``interventions=``, see it);
- positions mean what they mean in that trace: ``[:, -1]`` is each trace's own last position, and integer
  indices are checked against that trace's shapes (the edit itself knew none);
- constants become constants of the trace, hence params of its program (lifted by the passes), so edited
  models of one structure share compiled programs whatever their values; named params keep their names;
- every node says it was traced at the edit's line (:func:`~mlxterp.tracing.source.pin`), so an error
  points at the edit, not at the trace that replayed it.

Constants are recorded when first used: one that only feeds a number write (``output = 0.0``, which fills
the activation's shape) is written as the number. What does not depend on the trace (each node's handler,
its meta besides the source, the module binding of an indexed value) is worked out once per edit
(:class:`Plan`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from mlxterp.compiler import Graph, Op, Ref
from mlxterp.compiler.ir import Node, map_refs

from ..tracing.proxy import Proxy
from ..tracing.source import pin


class Step(NamedTuple):
    """One node to replay: its handler, the node, its meta besides the source, and its source line."""

    handler: Callable[["_Replay", "Step"], int]
    node: Node
    meta: Optional[dict]
    source: Any


class Plan:
    """A recorded graph prepared for replay (see the module docstring)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.steps = [Step(_HANDLERS[n.op], n, {k: v for k, v in n.meta.items() if k != "source"} or None,
                           n.meta.get("source", "<unknown>")) for n in graph if n.op is not Op.CONSTANT]
        # the module value a node stands for, where it is one: (path, call, phase), for index checks
        self.bindings = {n.id: _binding(n) for n in graph if n.op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT, Op.REPLACE)}

    def replay(self, trace: Any) -> None:
        """Record the graph into ``trace``."""
        run = _Replay(self, trace)
        previous = pin(None)
        try:
            for step in self.steps:
                pin(step.source)
                run.ids[step.node.id] = step.handler(run, step)
        finally:
            pin(previous)


def _binding(node: Node) -> tuple:
    if node.op is Op.REPLACE:
        return node.target
    path, idx = node.target
    return (path, idx, "output" if node.op is Op.MODULE_OUTPUT else "input")


class _Replay:
    """One replay of a plan into one trace: the trace's node id of each recorded node."""

    def __init__(self, plan: Plan, trace: Any):
        self.plan = plan
        self.trace = trace
        self.ids: dict[int, int] = {}

    def ref(self, ref: Ref) -> Ref:
        """The trace's reference for a recorded node's value (a constant is recorded on first use)."""
        node_id = self.ids.get(ref.id)
        if node_id is None:
            node = self.plan.graph.node(ref.id)
            current = pin(node.meta.get("source", "<unknown>"))
            try:
                node_id = self.ids[ref.id] = self._constant(node)
            finally:
                pin(current)
        return Ref.of(node_id)

    def refs(self, value: Any) -> Any:
        return map_refs(value, self.ref)

    def proxy(self, ref: Ref) -> Proxy:
        """A proxy of the trace's value for a recorded node (bound to its module value, if it is one)."""
        return Proxy(self.trace, self.ref(ref).id, self.plan.bindings.get(ref.id))

    def _constant(self, node: Node) -> int:
        name = node.meta.get("name")
        if name is not None:
            return self.trace.param(name, node.meta["value"])._node
        return self.trace._constant(node.meta["value"], node.meta.get("weak", False)).id


def _module_value(replay: _Replay, step: Step) -> int:
    path, idx = step.node.target
    phase = "output" if step.node.op is Op.MODULE_OUTPUT else "input"
    return replay.trace.module_value(path, idx, phase)._node


def _write(replay: _Replay, step: Step) -> int:
    node = step.node
    path, idx, phase = node.target
    (arg,) = node.args
    meta = step.meta or {}
    if meta.get("fill"):  # a Python number, filled in at the activation's shape and dtype
        value = replay.plan.graph.node(arg.id).meta["value"]
    else:
        value = Proxy(replay.trace, replay.ref(arg).id)
    replay.trace.write(path, idx, phase, value, meta.get("origin"))
    # the written value as the trace's code reads it now (in a trace with invokes, the invoke's view of it)
    return replay.trace.module_value(path, idx, phase)._node


def _getitem(replay: _Replay, step: Step) -> int:
    x, index = step.node.args
    return replay.trace.getitem(replay.proxy(x), replay.refs(index))._node


def _setitem(replay: _Replay, step: Step) -> int:
    x, index, value = step.node.args
    index = replay.refs(index)
    replay.trace._check_index(replay.proxy(x), index)  # against this trace's shape
    return replay.trace.record(Op.SETITEM, None, (replay.ref(x), index, replay.refs(value)), meta=step.meta)._node


def _compute(replay: _Replay, step: Step) -> int:
    node = step.node
    return replay.trace.record(node.op, node.target, replay.refs(node.args), replay.refs(node.kwargs),
                               meta=step.meta)._node


_HANDLERS: dict[Op, Callable[[_Replay, Step], int]] = {
    Op.MODULE_OUTPUT: _module_value,
    Op.MODULE_INPUT: _module_value,
    Op.REPLACE: _write,
    Op.GETITEM: _getitem,
    Op.SETITEM: _setitem,
    Op.CALL_FUNCTION: _compute,
    Op.CALL_METHOD: _compute,
    Op.BINARY: _compute,
    Op.UNARY: _compute,
}
