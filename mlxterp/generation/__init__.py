"""Generation with interventions: ``model.generate`` as a trace over decode steps."""

from .context import Generation, StepScope
from .sampling import TokenEvent
from .steering import steering_vector

__all__ = ["Generation", "StepScope", "TokenEvent", "steering_vector"]
