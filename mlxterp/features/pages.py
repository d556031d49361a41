"""The result of :func:`mlxterp.features.top_contexts`: each feature's top-activating contexts, every feature's
density, and the logit effects; its view is the feature page."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..views.page import Page, Viewable
from ..views.saving import Saveable
from . import plots
from .logits import LogitEffects


@dataclasses.dataclass
class FeatureContexts(Saveable, Viewable):
    """Top-activating contexts of features (``n`` features, ``k`` contexts each, windows of ``span`` tokens).

    Attributes:
        dictionary: the dictionary's label.
        features: the reported feature indices ``(n,)``.
        values: each context's activation ``(n, k)`` float32, largest first (NaN: fewer than ``k`` contexts
            where the feature is on).
        prompts, positions: where each context is ``(n, k)`` (the prompt's number in the list given, the token's
            position; -1 for none).
        tokens: the window's token ids ``(n, k, span)`` (-1 outside the prompt), the context's token at index
            ``before``.
        activations: the feature's activation at each window token ``(n, k, span)`` float32 (NaN outside the
            prompt and at tokens not evaluated, such as BOS).
        density: every feature's firing density ``(d_sae,)`` float32 (the fraction of evaluated tokens where it
            is active).
        tokens_seen: the evaluated tokens.
        labels: ``{token id: text}`` of the window tokens.
        before: tokens shown before each context's token.
        effects: the features' :class:`~mlxterp.features.logits.LogitEffects` (None if not computed).
    """

    kind = "feature_contexts"

    dictionary: str
    features: np.ndarray
    values: np.ndarray
    prompts: np.ndarray
    positions: np.ndarray
    tokens: np.ndarray
    activations: np.ndarray
    density: np.ndarray
    tokens_seen: int
    labels: Dict[int, str]
    before: int
    effects: Optional[LogitEffects] = None

    # -- saving (the logit effects are saved as their fields) ---------------------------------------
    def _record_fields(self) -> Dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["effects"] = None if self.effects is None else self.effects._record_fields()
        return fields

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "FeatureContexts":
        effects = data.get("effects")
        return cls(**dict(data, effects=None if effects is None else LogitEffects._from_record(effects)))

    # -- reading ------------------------------------------------------------------------------------
    def row(self, feature: int) -> int:
        """The index of ``feature`` in :attr:`features` (the row of the ``(n, ...)`` arrays that holds it).

        Raises:
            KeyError: ``feature`` is not among the reported features (they are listed).
        """
        found = np.flatnonzero(np.asarray(self.features) == int(feature))
        if not found.size:
            shown = list(np.asarray(self.features)[:8])
            raise KeyError(f"feature {feature} is not in these contexts; they cover features {shown}"
                           f"{'...' if len(self.features) > 8 else ''} (top_contexts(..., features=[...]))")
        return int(found[0])

    def top(self, feature: int, k: Optional[int] = None) -> List[Dict[str, Any]]:
        """The contexts of ``feature``, most active first: ``{"activation", "prompt", "position", "tokens"
        (texts of the window), "activations" (per window token, None where not shown), "text"}``."""
        i = self.row(feature)
        out = []
        for j in range(self.values.shape[1] if k is None else min(k, self.values.shape[1])):
            if not np.isfinite(self.values[i, j]):
                break
            window = [(self.labels[int(t)], None if np.isnan(a) else float(a))
                      for t, a in zip(self.tokens[i, j], self.activations[i, j]) if t >= 0]
            out.append({"activation": float(self.values[i, j]), "prompt": int(self.prompts[i, j]),
                        "position": int(self.positions[i, j]), "tokens": [w for w, _ in window],
                        "activations": [a for _, a in window], "text": "".join(w for w, _ in window)})
        return out

    def __repr__(self) -> str:
        alive = float(np.mean(self.density > 0))
        return (f"FeatureContexts({self.dictionary}: {len(self.features)} features, {self.values.shape[1]} contexts "
                f"each, {self.tokens_seen} tokens; {alive:.1%} of the features fire)")

    # -- plots and the page -------------------------------------------------------------------------
    def plot(self, feature: Optional[int] = None, save_path: Any = None, *,
             figsize: Tuple[float, float] = (12, 3.5)) -> Any:
        """The density histogram of every feature (with ``feature``'s density marked), and ``feature``'s
        logit effects when computed."""
        panels = 1 + (feature is not None and self.effects is not None) * 2
        fig, axes = plots.figure(figsize, 1, panels)
        plots.density_histogram(axes[0][0], np.asarray(self.density), self.dictionary)
        if feature is not None:
            density = float(self.density[int(feature)])
            if density > 0:
                axes[0][0].axvline(np.log10(density), color="#c44e52", label=f"feature {feature}")
                axes[0][0].legend(fontsize="small")
        if panels == 3:
            for ax, (name, pairs) in zip(axes[0][1:], self.effects.top(feature).items()):
                plots.bars(ax, [repr(t) for t, _ in pairs], [v for _, v in pairs], f"feature {feature}: {name}",
                           colors=["#4c72b0" if name == "promoted" else "#c44e52"] * len(pairs))
        return plots.finish(fig, save_path)

    def _page(self, feature: Optional[int] = None) -> Page:
        from ..views.features import feature_page

        return feature_page(self, int(self.features[0]) if feature is None else int(feature))
