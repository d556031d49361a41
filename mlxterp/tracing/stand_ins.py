"""Stand-ins while tracing: every recorded value has a lazily built, never evaluated array of its real shape
and dtype, so that user code inside the block can read ``.shape`` and index with negative positions, and
each recorded operation is checked as it is recorded (its stand-in is the operation applied to its inputs'
stand-ins; MLX builds the graph lazily and nothing is computed)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from mlxterp.compiler import Op
from mlxterp.compiler.ir import map_refs
from mlxterp.compiler.semantics import evaluate


class StandIns:
    """The trace's stand-in values (a mixin of :class:`~mlxterp.tracing.trace.Trace`), kept in
    ``self._abstract`` (``{node id: array}``) while the block runs."""

    _abstract: dict
    _owner: Any
    _invokes: Any
    graph: Any

    def abstract(self, node_id: int) -> Any:
        """A lazily built, never evaluated stand-in with the node's real shape and dtype."""
        if node_id not in self._abstract:
            self._abstract[node_id] = self._abstract_value(self.graph.node(node_id))
        return self._abstract[node_id]

    def _abstract_value(self, node: Any) -> Any:
        if self._invokes is not None and node.meta.get("view"):
            return self._invokes.abstract(node)
        if node.op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT):
            path, idx = node.target
            event = (path, idx, "output" if node.op is Op.MODULE_OUTPUT else "input")
            spec = self._owner._probe(self.recording_tokens()).values.get(event)
            if not isinstance(spec, tuple):
                raise RuntimeError(f"{self._owner._index.short(path) or '<model>'} {event[2]} has no array shape "
                                   f"(call {idx} {'returns' if event[2] == 'output' else 'receives'} {spec})")
            return mx.zeros(spec[0], spec[1])
        if node.op is Op.CONSTANT:
            return node.meta["value"]
        if node.op is Op.REPLACE:
            return self.abstract(node.args[0].id)
        args = map_refs(node.args, lambda r: self.abstract(r.id))
        kwargs = map_refs(node.kwargs, lambda r: self.abstract(r.id))
        return evaluate(node, args, kwargs)
