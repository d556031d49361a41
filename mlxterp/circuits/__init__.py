"""Circuits: direct logit attribution, residual decomposition, edge attribution (EAP, EAP-IG), exact edge
patching and circuit faithfulness, built on programs (see README.md, "Circuits"); feature circuits
(:func:`feature_attribution`, :func:`feature_edges`, :func:`feature_faithfulness`: nodes are the features and error terms of trained
dictionaries); and trainable interventions: distributed alignment search (:class:`DAS`).

The entry points are methods of :class:`mlxterp.InterpretableModel` (``model.direct_logit_attribution``,
``model.decompose``, ``model.edge_attribution``, ``model.edge_patching``, ``model.evaluate_circuit``,
``model.faithfulness_curve``) and :class:`DAS`; this package holds them and their results.
"""

from .das import DAS
from .das_rotation import DASIntervention
from .dla import DirectLogitAttribution, ResidualDecomposition
from .edges import Circuit, EdgeScores
from .faithfulness import EdgePatching, Faithfulness, FaithfulnessCurve
from .feature_edge_scores import FeatureEdges
from .feature_edges import feature_edges
from .feature_nodes import FeatureCircuit, FeatureScores
from .features import feature_attribution, feature_faithfulness
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
    "FeatureCircuit",
    "FeatureEdges",
    "FeatureScores",
    "ResidualDecomposition",
    "feature_attribution",
    "feature_edges",
    "feature_faithfulness",
]
