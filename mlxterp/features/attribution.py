"""Feature attribution: the indirect effect of every feature of a dictionary on a metric, from one forward and
one backward (attribution patching at the level of features), and exact feature ablation to check it.

The dictionary is spliced with its error term (the forward is the model's own), and two zero params are added
to its parts: ``features + delta_f`` and ``error + delta_e``. One ``mx.value_and_grad`` of the metric with
respect to them gives ``g_f = dm/df`` at every position and feature and ``g_e = dm/de`` (the program is
:mod:`.gradients`', which :func:`mlxterp.circuits.feature_attribution` runs with several dictionaries). Then, to
first order:

- ablation (one prompt): zeroing feature ``i`` at position ``t`` changes the metric by ``-f[t, i] * g_f[t, i]``,
  and zeroing the error term at ``t`` by ``-e[t] . g_e[t]``;
- patching (``corrupted=``): the gradient is taken on the corrupted run and giving feature ``i`` at ``t`` its
  clean value changes the metric by ``(f_clean - f_corrupted)[t, i] * g_f[t, i]`` (the clean run is a second
  variant of the same forward, of weight 0 in the differentiated sum), the error likewise.

:func:`feature_ablation` and :func:`feature_patching` run the exact versions for chosen features, one batched
forward of all variants.
The same construction is open to user programs (the guide's features page, docs/guide/features.md): add a param to
``h.sae.features`` or ``h.sae.error`` inside a trace and differentiate the program with respect to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..analysis.metrics import Metric
from ..dictionaries import sites
from ..analysis.validate import prompt_pair, resolve_metric, single_prompt, token_labels
from ..tracing.program import param
from ..tracing.proxy import apply
from ..views.saving import Saveable, attach
from . import plots
from .gradients import node_splices, part_gradients
from .splice import check_dictionary, splice

NAME = "attribution"  # what the dictionary is spliced as in these programs


@dataclasses.dataclass
class FeatureAttribution(Saveable):
    """The first-order effect of each feature (and of the error term) at each position on a metric.

    Attributes:
        dictionary: the dictionary's label.
        tokens: the prompt's tokens as text (the corrupted prompt's in patching mode).
        scores: ``(seq, d_sae)`` float32: the estimated change of the metric when that feature at that position
            is zeroed (ablation) or given its clean value (patching), in the metric's units (nats for
            ``logprob``, logits for ``logit_diff``, probability for ``prob``).
        error: ``(seq,)`` float32: the same for the error term.
        metric: the metric's label (``"logprob(' Paris')"``).
        value: the metric on the run the gradient was taken on, in its units.
        mode: ``"ablation"`` or ``"patching"``.
    """

    kind = "feature_attribution"

    dictionary: str
    tokens: List[str]
    scores: np.ndarray
    error: np.ndarray
    metric: str
    value: float
    mode: str

    def top(self, k: int = 10) -> List[Tuple[int, str, int, float]]:
        """The ``k`` largest scores in absolute value: ``(position, token text, feature, score)``, the score in
        the metric's units."""
        flat = np.argsort(-np.abs(self.scores), axis=None, kind="stable")[:k]
        return [(int(t), self.tokens[t], int(f), float(self.scores[t, f]))
                for t, f in zip(*np.unravel_index(flat, self.scores.shape))]

    def by_feature(self) -> np.ndarray:
        """Each feature's score summed over positions, ``(d_sae,)`` float32 in the metric's units: the
        estimated effect of that feature at every position at once, to first order."""
        return self.scores.sum(axis=0)

    def __repr__(self) -> str:
        head = f"FeatureAttribution({self.dictionary}, {self.mode}, {self.metric} = {self.value:.4g})"
        rows = [f"  {t:>3} {tok!r:<12} feature {f:>6}: {s:+.4g}" for t, tok, f, s in self.top(5)]
        return "\n".join([head] + rows)

    def plot(self, k: int = 20, save_path: Any = None, *, figsize: Tuple[float, float] = (10, 5)) -> Any:
        """Bars of the ``k`` largest scores (``feature @ token``) beside each position's error-term score."""
        top = self.top(k)
        fig, axes = plots.figure(figsize, 1, 2)
        plots.bars(axes[0][0], [f"{f} @ {t}:{tok!r}" for t, tok, f, _ in top], [s for *_, s in top],
                   f"top features ({self.mode}, {self.metric})",
                   colors=["#4c72b0" if s >= 0 else "#c44e52" for *_, s in top])
        plots.bars(axes[0][1], [f"{t}:{tok!r}" for t, tok in enumerate(self.tokens)], list(self.error),
                   "error term per position")
        return plots.finish(fig, save_path)


def attribution(model: Any, dictionary: Any, prompt: Any, *, metric: Any = "logprob", target: Any = None,
                foil: Any = None, corrupted: Any = None) -> FeatureAttribution:
    """The indirect effect of every feature of ``dictionary`` on a metric of the last position's logits.

    Args:
        model: the InterpretableModel.
        dictionary: an SAE or transcoder with weights and a site.
        prompt: the prompt (the clean one in patching mode).
        metric: a score of the last position's logits: ``"logprob"`` (default) or ``"prob"`` of ``target``,
            ``"logit_diff"`` (``target`` minus ``foil``), a :class:`~mlxterp.analysis.metrics.Metric`, or a
            function ``logits (rows, vocab) -> (rows,)``.
        target: the token (text or id) a named score is of; default: the prompt's top prediction.
        foil: the token ``logit_diff`` subtracts; default: the corrupted prompt's top prediction.
        corrupted: a prompt of the same length: patching mode (see the module docstring).

    Returns:
        A :class:`FeatureAttribution` (``.top(k)``, ``.by_feature()``, ``.plot()``, saveable).

    Raises:
        ValueError: a distance metric (its gradient at the clean run is 0), prompts of different lengths, a
            bad dictionary (as ``dictionaries=`` checks it).
    """
    splices = node_splices(model, [dictionary])
    pair = _pair(model, prompt, corrupted)
    metric_ = _score_metric(resolve_metric(model, metric, pair, target, foil))
    run = pair[1:2] if corrupted is not None else pair[0:1]
    if corrupted is None:
        g = part_gradients(model, splices, run, metric_, [1.0])
        scores, error = -g.features[0][0] * g.grad_features[0][0], -(g.errors[0][0] * g.grad_errors[0][0]).sum(-1)
    else:  # the corrupted run (weight 1) and the clean one (weight 0, for its parts) as two variants
        g = part_gradients(model, splices, run, metric_, [1.0, 0.0], source=pair[0:1], alphas=[0.0, 1.0])
        (f, f_clean), (e, e_clean) = g.features[0], g.errors[0]
        scores, error = (f_clean - f) * g.grad_features[0][0], ((e_clean - e) * g.grad_errors[0][0]).sum(axis=-1)
    value = g.values[0]
    result = FeatureAttribution(dictionary.label, token_labels(model, run[0].tolist()),
                                np.array(scores[0], dtype=np.float32), np.array(error[0], dtype=np.float32),
                                str(metric_), float(value.item()), "ablation" if corrupted is None else "patching")
    prompts = [prompt] if corrupted is None else [prompt, corrupted]
    return attach(result, model, prompts, {"dictionary": dictionary.label, "metric": str(metric_), "target": target,
                                          "foil": foil})


def feature_ablation(model: Any, dictionary: Any, prompt: Any, features: Sequence[int], *, position: Optional[int] = None,
                     metric: Any = "logprob", target: Any = None, foil: Any = None) -> np.ndarray:
    """The exact change of the metric when each of ``features`` is zeroed (the error term kept): one batched
    forward of ``len(features)`` variants.

    Args:
        model: the InterpretableModel.
        dictionary: an SAE or transcoder with weights and a site.
        prompt: the prompt.
        features: the features to ablate, one variant each.
        position: ablate at this position only (negative counts from the end); ``None``: at every position.
        metric: as for :func:`attribution`.
        target: as for :func:`attribution`.
        foil: as for :func:`attribution`.

    Returns:
        ``(len(features),)`` float64, in the metric's units: ``metric(ablated) - metric(prompt)``, what
        ``attribution(...).scores[position, feature]`` (or ``.by_feature()[feature]`` for every position)
        estimates.
    """
    return _exact(model, dictionary, prompt, None, features, position, metric, target, foil)


def feature_patching(model: Any, dictionary: Any, clean: Any, corrupted: Any, features: Sequence[int], *,
                     position: Optional[int] = None, metric: Any = "logprob", target: Any = None,
                     foil: Any = None) -> np.ndarray:
    """The exact change of the metric on the corrupted run when each of ``features`` takes its value from the
    clean run (the error term kept): one batched forward of ``len(features)`` variants.

    Args:
        model: the InterpretableModel.
        dictionary: an SAE or transcoder with weights and a site.
        clean: the prompt whose feature values are patched in.
        corrupted: the prompt run (the same length as ``clean``).
        features: the features to patch, one variant each.
        position: patch at this position only (negative counts from the end); ``None``: at every position.
        metric: as for :func:`attribution`.
        target: as for :func:`attribution`.
        foil: as for :func:`attribution`.

    Returns:
        ``(len(features),)`` float64, in the metric's units: ``metric(patched) - metric(corrupted)``, what
        ``attribution(model, dictionary, clean, corrupted=corrupted).scores[position, feature]`` estimates.
    """
    return _exact(model, dictionary, clean, corrupted, features, position, metric, target, foil)


def _exact(model: Any, dictionary: Any, prompt: Any, corrupted: Any, features: Sequence[int],
           position: Optional[int], metric: Any, target: Any, foil: Any) -> np.ndarray:
    """Each variant replaces feature ``features[j]`` (at ``position``, or every position) on the run by 0, or by
    its clean value when ``corrupted`` is given."""
    from .contexts import _features

    ids = _features(features, dictionary.d_sae)
    spec = splice(dictionary, name=NAME)
    checked = check_dictionary(model, spec, 0)
    pair = _pair(model, prompt, corrupted)
    metric_ = _score_metric(resolve_metric(model, metric, pair, target, foil))
    seq = pair.shape[1]
    if position is not None and not -seq <= position < seq:
        raise IndexError(f"position {position} is out of range for a prompt of {seq} tokens")
    keep = np.ones((len(ids), 1, seq, dictionary.d_sae), dtype=np.float32)
    keep[np.arange(len(ids)), 0, slice(None) if position is None else position, ids] = 0.0
    source = mx.zeros((1, seq, dictionary.d_sae))
    if corrupted is not None:
        with model.trace(pair[0:1], capture="saved", dictionaries=[spec]):
            source = getattr(sites.read(model, checked.site_in), NAME).features.save()
    with model.trace(pair[1:2] if corrupted is not None else pair[0:1], capture="saved", dictionaries=[spec]) as tr:
        parts = getattr(sites.read(model, checked.site_in), NAME)
        mask = param("keep", mx.ones((1, seq, dictionary.d_sae)))
        parts.features = parts.features * mask + param("source", source) * (1.0 - mask)
        apply(metric_.score, model.output[:, -1]).save("metric")
    base = float(np.array(tr.saved_values["metric"])[0])
    changed = np.array(tr.program().batched(keep=mx.array(keep))["metric"], dtype=np.float64)[:, 0]
    return changed - base


def _pair(model: Any, prompt: Any, corrupted: Any) -> mx.array:
    if corrupted is not None:
        return prompt_pair(model, prompt, corrupted)
    return _twice(single_prompt(model, prompt, "prompt"))


def _twice(tokens: mx.array) -> mx.array:
    return mx.concatenate([tokens, tokens], axis=0)


def _score_metric(metric: Metric) -> Metric:
    if metric.kind != "score":
        raise ValueError(f"metric {metric.name!r} is a distance from the clean logits, whose gradient at the clean run "
                         "is 0; feature attribution needs a score of the logits: 'logprob', 'prob', 'logit_diff' "
                         "(with target= and foil=) or a function logits -> score per row")
    return metric
