"""Circuits: direct logit attribution, residual decomposition, edge attribution (EAP, EAP-IG), exact edge
patching and circuit faithfulness, built on programs (see README.md, "Circuits"); and trainable
interventions: distributed alignment search (:class:`DAS`).

The entry points are methods of :class:`mlxterp.InterpretableModel` (``model.direct_logit_attribution``,
``model.decompose``, ``model.edge_attribution``, ``model.edge_patching``, ``model.evaluate_circuit``,
``model.faithfulness_curve``) and :class:`DAS`; this package holds them and their results.
"""

from .das import DAS
from .das_rotation import DASIntervention
from .dla import DirectLogitAttribution, ResidualDecomposition
from .edges import Circuit, EdgeScores
from .faithfulness import EdgePatching, Faithfulness, FaithfulnessCurve
from .nodes import CircuitGraph

__all__ = [
    "Circuit",
    "CircuitGraph",
    "DAS",
    "DASIntervention",
    "DirectLogitAttribution",
    "EdgePatching",
    "EdgeScores",
    "Faithfulness",
    "FaithfulnessCurve",
    "ResidualDecomposition",
]
