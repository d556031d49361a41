"""Logit effects of features: each feature's decoder row read through the final norm and the unembedding.

A feature ``i`` adds ``f_i * W_dec[i] / output_scale`` to its site (its output site, for a transcoder). Its
direct effect on the logits is that direction as the logit lens reads a residual: ``head(norm(d_i)) -
head(norm(0))`` (the second term removes what a norm's bias alone gives; it is 0 for an RMSNorm). The tokens
with the largest effects are those the feature promotes, the smallest those it suppresses. This is the direct
path only (what the later layers do with the direction is not in it), and it reads like a logit-lens value for
dictionaries whose output adds into the residual stream (residual sites, attention and MLP outputs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..analysis.unembed import find_unembedding
from ..analysis.validate import check_positive_int
from ..views.saving import Saveable, attach
from . import plots

CHUNK = 256  # decoder rows projected at a time (bounds the (rows, vocab) logits held at once)


@dataclasses.dataclass
class LogitEffects(Saveable):
    """Per feature the ``k`` tokens it promotes most and suppresses most (see the module docstring).

    Attributes:
        dictionary: the dictionary's label.
        features: the feature indices ``(n,)``.
        promoted, suppressed: token ids ``(n, k)``, largest effect first (most negative first).
        promoted_values, suppressed_values: their logit effects ``(n, k)`` float32, in logits: the logit
            lens's readout of the feature's decoder direction (the final norm rescales the direction, so the
            values rank tokens within a feature rather than measure one unit of its activation).
        labels: ``{token id: text}`` of every token listed.
    """

    kind = "feature_logit_effects"

    dictionary: str
    features: np.ndarray
    promoted: np.ndarray
    promoted_values: np.ndarray
    suppressed: np.ndarray
    suppressed_values: np.ndarray
    labels: Dict[int, str]

    def row(self, feature: int) -> int:
        """The index of ``feature`` in :attr:`features` (the row of the ``(n, k)`` arrays that holds it).

        Raises:
            KeyError: ``feature`` is not among these features (they are listed).
        """
        found = np.flatnonzero(np.asarray(self.features) == int(feature))
        if not found.size:
            raise KeyError(f"feature {feature} is not in these logit effects; they cover features "
                           f"{_show(self.features)}")
        return int(found[0])

    def top(self, feature: int, k: Optional[int] = None) -> Dict[str, List[Tuple[str, float]]]:
        """``{"promoted": [(token text, effect in logits), ...], "suppressed": [...]}`` of one feature, the
        ``k`` first of each (all kept by default)."""
        i = self.row(feature)
        pick = lambda ids, vals: [(self.labels[int(t)], float(v)) for t, v in zip(ids[i][:k], vals[i][:k])]  # noqa
        return {"promoted": pick(self.promoted, self.promoted_values),
                "suppressed": pick(self.suppressed, self.suppressed_values)}

    def plot(self, feature: int, save_path: Any = None, *, figsize: Tuple[float, float] = (8, 4)) -> Any:
        """Bars of the promoted and suppressed tokens' effects of one feature."""
        top = self.top(feature)
        fig, axes = plots.figure(figsize, 1, 2)
        for ax, (name, pairs) in zip(axes[0], top.items()):
            plots.bars(ax, [repr(t) for t, _ in pairs], [v for _, v in pairs], f"feature {feature}: {name}",
                       colors=["#4c72b0" if name == "promoted" else "#c44e52"] * len(pairs))
        return plots.finish(fig, save_path)


def logit_effects(model: Any, dictionary: Any, features: Optional[Sequence[int]] = None, *, k: int = 10) -> LogitEffects:
    """Each feature's direct effect on the logits (see the module docstring).

    Args:
        model: the InterpretableModel.
        dictionary: an SAE or transcoder with weights.
        features: feature indices (default: all).
        k: tokens promoted and suppressed kept per feature.

    Returns:
        A :class:`LogitEffects`: per feature the ``k`` tokens whose logits its decoder direction raises most
        and lowers most, with the changes in logits (float32).

    Raises:
        ValueError: feature indices out of range, a bad ``k``, or a dictionary whose output width is not the
            residual width.
    """
    from .contexts import _features, _label

    ids = _features(features, dictionary.d_sae)
    unembed = find_unembedding(model)
    vocab = unembed.vocab_size
    k = check_positive_int(k, "k", upper=vocab)
    if dictionary.d_out != unembed.hidden_size:
        raise ValueError(f"{dictionary!r}: its decoder rows have width {dictionary.d_out}, but the final norm and "
                         f"unembedding take {unembed.hidden_size}; logit effects need a dictionary whose output "
                         "lives in the residual stream")
    directions = dictionary.W_dec / dictionary.output_scale
    base = unembed.logits(mx.zeros((1, unembed.hidden_size), dtype=_dtype(unembed))).astype(mx.float32)
    parts = []
    for start in range(0, len(ids), CHUNK):
        rows = mx.take(directions, mx.array(ids[start:start + CHUNK].astype(np.int32)), axis=0)
        effect = unembed.logits(rows.astype(_dtype(unembed))).astype(mx.float32) - base
        order = mx.argsort(-effect, axis=-1)
        top, bottom = order[:, :k], order[:, ::-1][:, :k]
        parts.append([np.array(a) for a in (top, mx.take_along_axis(effect, top, axis=-1), bottom,
                                            mx.take_along_axis(effect, bottom, axis=-1))])
    promoted, promoted_v, suppressed, suppressed_v = (np.concatenate(p) for p in zip(*parts))
    labels = {int(t): _label(model, t) for t in np.unique(np.concatenate([promoted.ravel(), suppressed.ravel()]))}
    result = LogitEffects(dictionary.label, ids, promoted, promoted_v.astype(np.float32), suppressed,
                          suppressed_v.astype(np.float32), labels)
    return attach(result, model, [], {"dictionary": dictionary.label,
                                      "features": None if features is None else ids.tolist(), "k": k})


def _dtype(unembed: Any) -> Any:
    """The dtype hidden states reach the final norm in (its weight's; float32 without one)."""
    weight = getattr(unembed.norm, "weight", None)
    return weight.dtype if isinstance(weight, mx.array) else mx.float32


def _show(ids: Any) -> str:
    ids = list(np.asarray(ids))
    return str(ids) if len(ids) <= 8 else f"{ids[:8]}... ({len(ids)} features)"
