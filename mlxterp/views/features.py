"""The feature page: one feature of a dictionary, with its top-activating contexts (each window's tokens
coloured by the feature's activation, the context's token outlined; hover: the token and its activation), the
firing-density histogram of every feature of the dictionary (this feature's bin marked), and the tokens the
feature promotes and suppresses through the unembedding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

from .page import Page, origin_lines

if TYPE_CHECKING:
    from ..features.pages import FeatureContexts

BINS = 30


def feature_page(result: "FeatureContexts", feature: int) -> Page:
    """The page of ``feature`` (one of ``result.features``).

    Raises:
        KeyError: a feature the result does not cover (the covered ones are named).
    """
    i = result.row(feature)
    contexts = [_context(result, i, j) for j in range(result.values.shape[1]) if np.isfinite(result.values[i, j])]
    density = float(result.density[feature])
    prompts = result.provenance.get("prompts") or []
    model_line = [line for line in origin_lines(result.provenance, ()) if line[0] == "Model"]
    header = model_line + [("Prompts", f"{len(prompts)} shown in the record (contexts name them by number)")] + [
        ("Feature", f"{feature} of {result.dictionary} ({len(result.density)} features)"),
        ("Density", f"active on {density:.4%} of {result.tokens_seen} evaluated tokens")]
    data = {"feature": int(feature), "dictionary": result.dictionary, "density": density,
            "histogram": _histogram(np.asarray(result.density, dtype=np.float64), density),
            "contexts": contexts, "before": int(result.before), "effects": _effects(result, feature)}
    return Page(f"Feature {feature}", header, "features", data, height=min(1200, 420 + 34 * len(contexts)))


def _context(result: "FeatureContexts", i: int, j: int) -> Dict[str, Any]:
    tokens = [int(t) for t in result.tokens[i, j]]
    return {"activation": float(result.values[i, j]), "prompt": int(result.prompts[i, j]),
            "position": int(result.positions[i, j]),
            "tokens": [result.labels[t] if t >= 0 else None for t in tokens],
            "values": [None if math.isnan(a) else float(a) for a in result.activations[i, j]]}


def _histogram(density: np.ndarray, mine: float) -> Dict[str, Any]:
    """Counts of ``log10`` density over the features that fire, the bin of this feature, the dead count."""
    alive = np.log10(density[density > 0])
    if alive.size == 0:
        return {"edges": [], "counts": [], "mine": None, "dead": int(density.size)}
    low, high = float(alive.min()), float(alive.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(alive, bins=BINS, range=(low, high))
    mine_bin: Optional[int] = None
    if mine > 0:
        mine_bin = int(min(BINS - 1, max(0, np.searchsorted(edges, math.log10(mine), side="right") - 1)))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "mine": mine_bin,
            "dead": int(np.sum(density == 0))}


def _effects(result: "FeatureContexts", feature: int) -> Optional[Dict[str, List]]:
    if result.effects is None:
        return None
    top = result.effects.top(feature)
    return {name: [[token, float(v)] for token, v in pairs] for name, pairs in top.items()}
