"""The most active features at each token of a prompt (one traced forward, stopped at the dictionary's site)."""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

import numpy as np

from ..analysis.validate import check_positive_int, single_prompt, token_labels
from ..views.saving import Saveable, attach
from . import plots
from .splice import check_dictionary


@dataclasses.dataclass
class TokenFeatures(Saveable):
    """Per token of a prompt, its ``k`` most active features.

    Attributes:
        dictionary: the dictionary's label.
        tokens: the prompt's tokens as text.
        features: feature indices ``(seq, k)`` int64, most active first.
        values: their activations ``(seq, k)`` float32 (0 where fewer than ``k`` features are active).
        active: how many features are active at each token ``(seq,)`` int64.
    """

    kind = "token_features"

    dictionary: str
    tokens: List[str]
    features: np.ndarray
    values: np.ndarray
    active: np.ndarray

    def top(self, position: int, k: Optional[int] = None) -> List[Tuple[int, float]]:
        """``(feature, activation)`` of the active features at ``position`` (negative counts from the end)."""
        n = len(self.tokens)
        if not -n <= position < n:
            raise IndexError(f"position {position} is out of range for a prompt of {n} tokens")
        pairs = [(int(f), float(v)) for f, v in zip(self.features[position], self.values[position]) if v > 0]
        return pairs[:k]

    def __repr__(self) -> str:
        lines = [f"TokenFeatures({self.dictionary}, {len(self.tokens)} tokens)"]
        for t, token in enumerate(self.tokens):
            shown = ", ".join(f"{f}: {v:.3g}" for f, v in self.top(t, 3))
            lines.append(f"  {t:>3} {token!r:<14} {int(self.active[t]):>4} active  {shown}")
        return "\n".join(lines)

    def plot(self, save_path: Any = None, *, figsize: Optional[Tuple[float, float]] = None) -> Any:
        """A heatmap: the prompt's tokens (rows) by the features that are among some token's top (columns)."""
        columns = sorted({int(f) for f, v in zip(self.features.ravel(), self.values.ravel()) if v > 0})
        grid = np.zeros((len(self.tokens), len(columns)))
        where = {f: j for j, f in enumerate(columns)}
        for t in range(len(self.tokens)):
            for f, v in self.top(t):
                grid[t, where[f]] = v
        fig, axes = plots.figure(figsize or (max(4, 0.35 * len(columns) + 2), max(3, 0.3 * len(self.tokens) + 1)))
        ax = axes[0][0]
        image = ax.imshow(grid, aspect="auto", cmap="Blues")
        ax.set_yticks(range(len(self.tokens)), [repr(t) for t in self.tokens], fontsize="small")
        ax.set_xticks(range(len(columns)), [str(c) for c in columns], fontsize="small", rotation=90)
        ax.set_xlabel("feature")
        ax.set_title(f"{self.dictionary}: top features per token", fontsize="small")
        fig.colorbar(image, ax=ax, label="activation")
        return plots.finish(fig, save_path)


def token_features(model: Any, dictionary: Any, prompt: Any, *, k: int = 5) -> TokenFeatures:
    """The ``k`` most active features of ``dictionary`` at each token of ``prompt``.

    Args:
        model: the InterpretableModel.
        dictionary: an SAE or transcoder (read at its input site).
        prompt: one prompt (text or token ids).
        k: features kept per token.

    Returns:
        A :class:`TokenFeatures`: per token the ``k`` most active features ``(seq, k)`` int64 and their
        activations float32 (``.top(position)``, ``.plot()``, saveable).
    """
    splice = check_dictionary(model, dictionary, 0)
    k = check_positive_int(k, "k", upper=dictionary.d_sae)
    tokens = single_prompt(model, prompt, "prompt")
    with model.trace(tokens, capture="saved", dictionaries=[splice.dictionary]):
        from ..dictionaries import sites

        features = getattr(sites.read(model, splice.site_in), dictionary.name).features.save()
    f = np.array(features[0], dtype=np.float32)
    order = np.argsort(-f, axis=-1, kind="stable")[:, :k]
    values = np.take_along_axis(f, order, axis=-1)
    result = TokenFeatures(dictionary.label, token_labels(model, tokens[0].tolist()), order,
                           np.maximum(values, 0).astype(np.float32), (f > 0).sum(-1))
    return attach(result, model, [prompt], {"dictionary": dictionary.label, "k": k})
