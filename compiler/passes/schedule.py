"""Scheduling: attach each node to the module call (hook event) where its inputs first exist.

Events are ``(path, call_idx, phase)`` with phase ``"input"`` (before the module runs) or ``"output"``
(after), ordered by the model's real execution order, which the probe records. User code may touch
modules in any order; this pass puts the work where the forward pass can do it.

Needs: a verified graph and the event order. Guarantees: each node runs at or after every node it
reads; a ``replace`` runs at its own module call and never reads a later one (else
:class:`CausalityError`); writes to a module call that never happens raise
:class:`ModuleNotCalledError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ..errors import CausalityError, ModuleNotCalledError
from ..ir import Graph, Node, Op

Event = tuple
"""A hook event: ``(module path, call index, phase)``, phase ``"input"`` or ``"output"`` (or a point's)."""
START: Event = ("<start>", 0, "start")
END: Event = ("<end>", 0, "end")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Nodes grouped by event, each group in graph order; ``replacements`` maps an event to its write."""

    at_event: dict
    replacements: dict
    events: tuple

    def hooked_paths(self) -> set[str]:
        """Module paths that need a hook for this schedule."""
        return {e[0] for e in self.at_event if e not in (START, END)} | {e[0] for e in self.replacements}

    def stop_event(self, captures: Any) -> Event | None:
        """The last event the program needs, when the forward may stop there: nothing after it is read,
        written or captured. ``None`` when the whole forward is needed (its output is read, every module is
        captured, or the last needed event is the last of the forward)."""
        if captures == "all" or not self.events:
            return None
        needed = {e for e in self.at_event if e not in (START, END)} | set(self.replacements)
        needed |= {(path, idx, "output") for path, idx in captures}
        if not needed:
            return self.events[0]
        rank = {e: i for i, e in enumerate(self.events)}
        last = max(needed, key=lambda e: rank.get(e, len(self.events)))
        return None if rank.get(last, len(self.events)) >= len(self.events) - 1 else last


def schedule(graph: Graph, event_order: Sequence[Event]) -> Schedule:
    """Group nodes by the event at which they can run (see the module docstring)."""
    rank = {START: -1, END: len(event_order)}
    rank.update({e: i for i, e in enumerate(event_order)})
    anchor: dict[int, Event] = {}
    at_event: dict[Event, list[int]] = {}
    replacements: dict[Event, int] = {}
    for node in graph:
        event = _anchor(node, anchor, rank)
        anchor[node.id] = event
        at_event.setdefault(event, []).append(node.id)
        if node.op is Op.REPLACE:
            replacements[event] = node.args[0].id
    return Schedule({e: tuple(ids) for e, ids in at_event.items()}, replacements, tuple(event_order))


def _anchor(node: Node, anchor: dict[int, Event], rank: dict) -> Event:
    latest = max((anchor[r] for r in node.refs()), key=lambda e: rank[e], default=START)
    if node.op in (Op.MODULE_OUTPUT, Op.MODULE_INPUT, Op.REPLACE):
        own = _module_event(node)
        if own not in rank:
            raise ModuleNotCalledError(
                f"{node.describe()} (traced at {node.source}) refers to call {own[1]} of "
                f"{own[0] or '<model>'}, which the forward pass never makes; "
                f"modules called in this forward: {_called(rank)}"
            )
        if node.op is Op.REPLACE and rank[latest] > rank[own]:
            raise CausalityError(
                f"the value written to the {own[2]} of {own[0] or '<model>'} (traced at {node.source}) depends "
                f"on the {latest[2]} of {latest[0] or '<model>'}, which the model computes later; "
                "a write can only use values computed before (or by) the module it writes to"
            )
        return own
    return latest


def _module_event(node: Node) -> Event:
    if node.op is Op.REPLACE:
        return node.target
    path, idx = node.target
    return (path, idx, "output" if node.op is Op.MODULE_OUTPUT else "input")


def _called(rank: dict) -> str:
    paths = sorted({e[0] for e in rank if e not in (START, END)})
    shown = ", ".join(p or "<model>" for p in paths[:12])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > 12 else "")
