"""Circuits: methods that find where a model computes something. Trainable interventions: distributed
alignment search (:class:`DAS`)."""

from .das import DAS
from .das_rotation import DASIntervention

__all__ = ["DAS", "DASIntervention"]
