"""The pass pipeline: verify, then each pass, verifying after every one."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from ..ir import Graph
from ..verify import verify
from .dce import eliminate_dead_code
from .lift import lift_constants
from .schedule import Event, Schedule, schedule

DEFAULT_PASSES: tuple[Callable[[Graph], tuple[Graph, bool]], ...] = (
    eliminate_dead_code,
    lift_constants,
)


@dataclasses.dataclass(frozen=True)
class PassResult:
    """The graph before and after the passes, which passes changed it, and its schedule."""

    before: Graph
    after: Graph
    changed: tuple[str, ...]
    schedule: Schedule


def run_passes(graph: Graph, event_order: Sequence[Event],
               passes: Sequence[Callable[[Graph], tuple[Graph, bool]]] = DEFAULT_PASSES) -> PassResult:
    """Verify ``graph``, run ``passes`` in order (verifying each result), then schedule it."""
    verify(graph)
    current, changed = graph, []
    for p in passes:
        current, did_change = p(current)
        verify(current, origin=graph)
        if did_change:
            changed.append(p.__name__)
    return PassResult(graph, current, tuple(changed), schedule(current, event_order))
