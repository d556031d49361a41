"""Graph passes. Each is a function ``Graph -> (Graph, changed)`` that leaves its input untouched."""

from .dce import eliminate_dead_code
from .lift import lift_constants
from .pipeline import PassResult, run_passes
from .schedule import Event, Schedule, schedule

__all__ = [
    "eliminate_dead_code",
    "lift_constants",
    "run_passes",
    "PassResult",
    "schedule",
    "Schedule",
    "Event",
]
