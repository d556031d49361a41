"""The gradient of a metric at the features and error terms of several spliced dictionaries, for ``K``
variants of one prompt batch, from one forward and one backward (what feature attribution and feature
circuits are made of).

Every dictionary is spliced with its error term (named ``node0``, ``node1``, ... in the program, in the order
given) and zero params are added to its parts: ``features + delta_f{i}`` and ``error + delta_e{i}``. The ``K``
variants are ``K`` row blocks of one batch (the prompt rows repeated): with ``source`` tokens, block ``k``'s
embedding is ``(1 - alpha_k) e + alpha_k e(source)`` (the input path of integrated gradients, as
:func:`mlxterp.circuits.ops.interpolate` computes it: ``alpha = 0`` is the run itself, ``1`` the source prompts'
run, exactly). One ``mx.value_and_grad`` of ``sum_k w_k metric_k`` (each block's metric averaged over its
rows) with respect to the deltas gives every part's gradient in every block. The forward and backward are one
compiled function, cached on the model per structure (the dictionaries' functions, sites and weight shapes,
the metric, the shape, ``K``, the path); the dictionaries' weights are its arguments, so another dictionary of
the same shapes replays it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Sequence

import mlx.core as mx

from mlxterp.compiler import StateCompiled

from ..analysis.metrics import Metric
from ..analysis.programs import cached_program, keep_program
from ..dictionaries import sites
from ..dictionaries.dictionary import Dictionary
from ..tracing.program import param
from ..tracing.proxy import apply
from .splice import Splice, check_dictionaries, splice

KIND = "features.gradients"


@dataclasses.dataclass
class PartGradients:
    """What one forward and backward gave, per variant (leading axis ``K``, then ``rows``).

    Attributes:
        values: ``(K,)`` float32: each variant's metric, averaged over its rows.
        features: per dictionary ``(K, rows, seq, d_sae)``: the features in each variant.
        errors: per dictionary ``(K, rows, seq, d_out)``: the error terms.
        grad_features: per dictionary ``(K, rows, seq, d_sae)``: ``w_k d metric_k / d features``.
        grad_errors: per dictionary ``(K, rows, seq, d_out)``: ``w_k d metric_k / d error``.
    """

    values: mx.array
    features: List[mx.array]
    errors: List[mx.array]
    grad_features: List[mx.array]
    grad_errors: List[mx.array]


def node_splices(model: Any, dictionaries: Sequence[Any]) -> tuple:
    """``dictionaries`` (SAEs/transcoders) checked against ``model`` as :class:`Splice` s named ``node0``,
    ``node1``, ... with their error terms (every problem raised before anything runs, as ``dictionaries=``
    raises it)."""
    if not isinstance(dictionaries, (list, tuple)) or not dictionaries:
        raise TypeError(f"dictionaries: expected a non-empty list of SAEs/Transcoders, got {dictionaries!r}")
    return check_dictionaries(model, [splice(_dictionary(d, i), name=f"node{i}") for i, d in enumerate(dictionaries)])


def _dictionary(entry: Any, i: int) -> Dictionary:
    if not isinstance(entry, Dictionary):
        raise TypeError(f"dictionaries[{i}] is a {type(entry).__name__}; expected an mlxterp SAE or Transcoder "
                        "(each is spliced with its error term)")
    return entry


def part_gradients(model: Any, splices: Sequence[Splice], tokens: mx.array, metric: Metric, weights: Sequence[float],
                   *, source: Optional[mx.array] = None, alphas: Optional[Sequence[float]] = None) -> PartGradients:
    """One forward and backward of ``len(weights)`` variants of ``tokens`` ``(rows, seq)`` (see the module
    docstring).

    Args:
        model: the InterpretableModel.
        splices: from :func:`node_splices`.
        tokens: the run's token ids.
        metric: a score metric (``metric.score(logits (rows, vocab)) -> (rows,)``).
        weights: each variant's weight in the differentiated sum.
        source: token ids like ``tokens``: the other end of the input path (``None``: every variant is the
            run of ``tokens``).
        alphas: each variant's point on the input path (with ``source``).

    Returns:
        :class:`PartGradients`, every array with leading axes ``(K, rows)`` (``values``: ``(K,)``).
    """
    k = len(weights)
    program = _program(model, splices, tokens, metric, k, source is not None)
    rows = tokens.shape[0]
    tiled = mx.concatenate([tokens] * k, axis=0)
    extra = {}
    if source is not None:
        extra["source"] = mx.concatenate([source.astype(tokens.dtype)] * k, axis=0)
        extra["alpha"] = mx.repeat(mx.array(list(alphas), dtype=mx.float32), rows)[:, None, None]
    dictionary_weights = [s.dictionary.inference_weights() for s in splices]
    out = program(tiled, mx.array(list(weights), dtype=mx.float32), extra, dictionary_weights)
    (values, features, errors), (g_f, g_e) = out

    def fold(a: mx.array) -> mx.array:
        return a.reshape((k, rows) + tuple(a.shape[1:]))

    return PartGradients(values, [fold(f) for f in features], [fold(e) for e in errors], [fold(g) for g in g_f],
                         [fold(g) for g in g_e])


class _Compiled:
    """The traced program, its dictionaries' weights as params by name, and its compiled value and gradient."""

    def __init__(self, model: Any, prog: Any, names: List[Dict[str, str]], metric: Metric, k: int):
        self.prog, self.names, self.metric, self.k = prog, names, metric, k
        n = len(names)
        shapes = [prog.params[f"delta_{p}{i}"].shape for p in ("f", "e") for i in range(n)]
        self.zeros = [mx.zeros(s, dtype=mx.float32) for s in shapes]
        step = mx.value_and_grad(self._value, argnums=0)
        self._grad = StateCompiled(step, model.model, model._executor.stats)

    def _value(self, deltas: List[mx.array], tokens: mx.array, weights: mx.array, extra: Dict[str, mx.array],
               dictionary_weights: List[Dict[str, mx.array]]) -> tuple:
        n = len(self.names)
        params = {f"delta_{p}{i}": deltas[j * n + i] for j, p in enumerate(("f", "e")) for i in range(n)}
        for names, ws in zip(self.names, dictionary_weights):
            params.update({names[w]: value for w, value in ws.items()})
        out = self.prog.fn(tokens, dict(params, **extra))
        logits = out["logits"].reshape((self.k, -1) + tuple(out["logits"].shape[1:]))
        values = mx.stack([self.metric.score(logits[j]).mean() for j in range(self.k)])
        return (values * weights).sum(), (values, [out[f"features{i}"] for i in range(n)],
                                          [out[f"error{i}"] for i in range(n)])

    def __call__(self, tokens: mx.array, weights: mx.array, extra: Dict[str, mx.array],
                 dictionary_weights: List[Dict[str, mx.array]]) -> tuple:
        (_, parts), grads = self._grad(self.zeros, tokens, weights, extra, dictionary_weights)
        n = len(self.names)
        return parts, (grads[:n], grads[n:])


def _program(model: Any, splices: Sequence[Splice], tokens: mx.array, metric: Metric, k: int,
             path: bool) -> _Compiled:
    """The compiled gradient program of this structure (cached on the model; recorded once)."""
    key = (tuple(structure(s) for s in splices), metric, tuple(tokens.shape), k, path)
    found = cached_program(model, KIND, key)
    if found is not None:
        return found
    rows, seq = tokens.shape[0] * k, tokens.shape[1]
    tiled = mx.concatenate([tokens] * k, axis=0)
    specs = [splice(s.dictionary, name=s.name) for s in splices]
    with model.trace(tiled, capture="saved", dictionaries=specs, compile=False) as tr:
        if path:
            _interpolate(model, param("source", tiled), param("alpha", mx.zeros((rows, 1, 1))))
        for i, s in enumerate(splices):
            d, parts = s.dictionary, getattr(sites.read(model, s.site_in), s.name)
            parts.features.save(f"features{i}")
            parts.error.save(f"error{i}")
            parts.features = parts.features + param(f"delta_f{i}", mx.zeros((rows, seq, d.d_sae)))
            parts.error = parts.error + param(f"delta_e{i}", mx.zeros((rows, seq, d.d_out)))
        model.output[:, -1].save("logits")
    prog = tr.program()
    return keep_program(model, KIND, key, _Compiled(model, prog, weight_params(prog, splices), metric, k))


def structure(s: Splice) -> tuple:
    """What fixes a spliced dictionary's part of a program's structure: its functions, sites and weight shapes."""
    d = s.dictionary
    shapes = tuple((n, tuple(w.shape), w.dtype) for n, w in d.inference_weights().items())
    return (d.encoder, d.decoder, s.site_in.key, s.site_out.key, shapes)


def weight_params(prog: Any, splices: Sequence[Splice]) -> List[Dict[str, str]]:
    """Per dictionary, ``{weight name: the program's param}`` (a splice's weights are constants of the trace,
    bound to params by identity)."""
    by_id = {id(spec.default): name for name, spec in prog.params.items()}
    return [{n: by_id[id(w)] for n, w in s.dictionary.inference_weights().items()} for s in splices]


def _interpolate(model: Any, source: Any, alpha: Any) -> None:
    """Inside a trace: the embedding becomes ``(1 - alpha) e + alpha e(source)``."""
    from ..circuits.ops import interpolate

    path = model._index.token_embedding()
    if path is None:
        raise ValueError("integrated gradients on the input path need the model's token embedding, and this model "
                         "has none that mlxterp can find (no adapter and no single embedding module)")
    embed = model.module(path)
    embed.output = apply(functools.partial(interpolate, embed=model._index.modules[path]), embed.output, source, alpha)
