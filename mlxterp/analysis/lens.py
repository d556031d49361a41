"""Reading hidden states as token predictions: ``get_token_predictions`` and the logit lens."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import mlx.core as mx
import numpy as np

from ..views.page import Page, Viewable
from ..views.saving import Saveable, attach
from .display import show_if_interactive
from .serial import holds_model_lock
from .unembed import find_unembedding
from .validate import check_top_k, resolve_layers, single_prompt, token_labels

if TYPE_CHECKING:
    from ..model import InterpretableModel

# Logit elements (layers x positions x vocab) projected at once by the logit lens.
LENS_BUDGET = 1 << 24


class LogitLensResult(dict, Saveable, Viewable):
    """What each layer predicts at each position: ``{layer: [[(token_id, probability, token_str), ...] per
    position]}`` (a dict, as ``logit_lens`` always returned), with the arrays it was built from.

    Saves and loads (``save(path)``, ``LogitLensResult.load(path)``); ``save_html(path, compare=None)``
    writes the interactive view, with a second lens result (a tuned lens) beside it when ``compare`` is
    given (see :func:`mlxterp.views.lens.lens_page`).

    Attributes:
        layers: the layers, in the dict's order.
        input_ids: the prompt's token ids.
        input_tokens: the prompt's tokens as text.
        ids: ``(layers, seq, k)`` int64 top-k token ids, best first.
        probs: ``(layers, seq, k)`` float32 softmax probabilities of ``ids`` (fractions in [0, 1], computed in
            float32).
        strings: ``{token_id: text}`` of every id in ``ids``.
        lens: what projected the hidden states (``"logit lens"``; a tuned lens names itself).
    """

    kind = "logit_lens"

    def __init__(self, layers: List[int], input_ids: List[int], input_tokens: List[str], ids: np.ndarray,
                 probs: np.ndarray, strings: Dict[int, str], lens: str = "logit lens"):
        super().__init__({layer: [[(int(i), float(p), strings[int(i)]) for i, p in zip(pos_ids, pos_probs)]
                                  for pos_ids, pos_probs in zip(ids[n], probs[n])]
                          for n, layer in enumerate(layers)})
        self.layers, self.input_ids, self.input_tokens = list(layers), list(input_ids), list(input_tokens)
        self.ids, self.probs, self.strings, self.lens = ids, probs, dict(strings), lens

    def _record_fields(self) -> Dict[str, Any]:
        fields = {"layers": self.layers, "input_ids": self.input_ids, "input_tokens": self.input_tokens,
                  "ids": self.ids, "probs": self.probs, "strings": self.strings, "lens": self.lens}
        if dict(self) != dict(LogitLensResult(**fields)):  # the record holds the arrays: they must still agree
            raise ValueError("this logit-lens result's dict was changed after it was made, so it no longer matches "
                             "its arrays (.ids, .probs, .strings), which are what saving writes; save an unchanged "
                             "result, or build a new LogitLensResult from edited arrays")
        return fields

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "LogitLensResult":
        return cls(**data)

    def _page(self, **options: Any) -> Page:
        from ..views.lens import lens_page

        return lens_page(self, **options)


def top_k_sorted(scores: mx.array, k: int) -> Tuple[mx.array, mx.array]:
    """Indices and values of the ``k`` largest entries along the last axis, largest first."""
    vocab = scores.shape[-1]
    if k >= vocab:
        idx = mx.argsort(-scores, axis=-1)
    else:
        idx = mx.argpartition(-scores, kth=k - 1, axis=-1)[..., :k]
        vals = mx.take_along_axis(scores, idx, axis=-1)
        idx = mx.take_along_axis(idx, mx.argsort(-vals, axis=-1), axis=-1)
    return idx, mx.take_along_axis(scores, idx, axis=-1)


def _as_hidden(hidden_state: Any, hidden_size: int) -> Tuple[mx.array, bool]:
    """``(batch, hidden)`` array and whether the input was a single vector."""
    try:
        h = hidden_state if isinstance(hidden_state, mx.array) else mx.array(hidden_state)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"hidden_state: expected an mx.array of shape (hidden,) or (batch, hidden), "
                         f"got {type(hidden_state).__name__}") from None
    if h.ndim not in (1, 2) or h.shape[-1] != hidden_size or not mx.issubdtype(h.dtype, mx.floating):
        raise ValueError(f"hidden_state: expected a float array of shape ({hidden_size},) or (batch, {hidden_size}) "
                         f"(the model's hidden size is {hidden_size}), got shape {tuple(h.shape)} dtype {h.dtype}")
    return (h[None], True) if h.ndim == 1 else (h, False)


@holds_model_lock
def get_token_predictions(model: InterpretableModel, hidden_state: Any, top_k: int = 10,
                          return_scores: bool = False) -> Union[List[Any], List[List[Any]]]:
    """Top-k tokens of hidden state(s) through the output projection only (no final norm); scores are logits.

    See :meth:`mlxterp.analysis.methods.AnalysisMixin.get_token_predictions`.
    """
    unembed = find_unembedding(model)
    h, single = _as_hidden(hidden_state, unembed.hidden_size)
    top_k = check_top_k(top_k, unembed.vocab_size)
    logits = unembed.logits(h, apply_norm=False).astype(mx.float32)
    idx, vals = top_k_sorted(logits, top_k)
    mx.eval(idx, vals)
    ids, scores = idx.tolist(), vals.tolist()
    rows = [list(zip(i, s)) if return_scores else i for i, s in zip(ids, scores)]
    return rows[0] if single else rows


@holds_model_lock
def logit_lens(model: InterpretableModel, text: Any, top_k: int = 1, layers: Optional[List[int]] = None, plot: bool = False,
               max_display_tokens: int = 15, figsize: Tuple[float, float] = (16, 10), cmap: str = "viridis", *,
               save_path: Optional[Union[str, Path]] = None, lens: Any = None) -> LogitLensResult:
    """Each layer's residual output, through the final norm and unembedding, at every position.

    See :meth:`mlxterp.analysis.methods.AnalysisMixin.logit_lens`.
    """
    tokens = single_prompt(model, text, "text")
    layer_ids = resolve_layers(layers, len(model.layers))
    unembed = find_unembedding(model)
    top_k = check_top_k(top_k, unembed.vocab_size)
    _check_lens(model, lens, layer_ids, unembed.hidden_size)
    with model.trace(tokens, capture="saved"):
        handles = [model.layers[layer].output.save() for layer in layer_ids]
    states = [_layer_state(h, layer) for h, layer in zip(handles, layer_ids)]
    if lens is not None:
        states = [lens.translate(h, layer) for h, layer in zip(states, layer_ids)]
    ids, probs = _project(unembed, mx.stack(states), top_k)
    input_ids = tokens[0].tolist()
    results = LogitLensResult(layer_ids, input_ids, token_labels(model, input_ids), ids.astype(np.int64), probs,
                              _strings(model, np.unique(ids)), lens="logit lens" if lens is None else "tuned lens")
    attach(results, model, [text], {"top_k": top_k, "layers": layers, "lens": None if lens is None else repr(lens)})
    if plot or save_path is not None:
        _plot(model, results, tokens, max_display_tokens, figsize, cmap, save_path, plot)
    return results


def _check_lens(model: InterpretableModel, lens: Any, layers: List[int], width: int) -> None:
    """ValueError before any forward when ``lens`` is not a tuned lens of this model reading every layer."""
    if lens is None:
        return
    from ..lenses import TunedLens

    if not isinstance(lens, TunedLens):
        raise ValueError(f"lens: expected an mlxterp TunedLens (mt.TunedLens.train(...) or .load(...)), got "
                         f"{type(lens).__name__}")
    if lens.n_layers != len(model.layers) or lens.d_model != width:
        raise ValueError(f"lens: made for a model of {lens.n_layers} layers of width {lens.d_model}; this model has "
                         f"{len(model.layers)} layers of width {width}")
    missing = [layer for layer in layers if not lens.covers(layer)]
    if missing:
        raise ValueError(f"lens: {lens!r} has no translator for layers {missing}; pass layers= within "
                         f"{lens.layers} (and the last, {lens.n_layers - 1})")


def _layer_state(handle: Any, layer: int) -> mx.array:
    value = handle if isinstance(handle, mx.array) else handle.value
    if not isinstance(value, mx.array) or value.ndim != 3:
        raise ValueError(f"layer {layer} returns {type(value).__name__}; the logit lens needs each layer to "
                         "return its residual stream as a (batch, seq, hidden) array")
    return value[0]


def _project(unembed: Any, hidden: mx.array, top_k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k token ids and softmax probabilities, ``(layers, seq, k)``, in chunks of layers."""
    n_layers, seq = hidden.shape[0], hidden.shape[1]
    step = max(1, LENS_BUDGET // max(1, seq * unembed.vocab_size))
    ids, probs = [], []
    for start in range(0, n_layers, step):
        logits = unembed.logits(hidden[start:start + step]).astype(mx.float32)
        idx, p = top_k_sorted(mx.softmax(logits, axis=-1), top_k)
        mx.eval(idx, p)
        ids.append(np.array(idx))
        probs.append(np.array(p))
    return np.concatenate(ids), np.concatenate(probs)


def _strings(model: InterpretableModel, ids: np.ndarray) -> Dict[int, str]:
    return dict(zip((int(i) for i in ids), token_labels(model, ids.tolist())))


def _plot(model: InterpretableModel, results: Dict, tokens: mx.array, max_display_tokens: int, figsize: Tuple[float, float],
          cmap: str, save_path: Any, show: bool) -> None:
    from ..plotting import plot_logit_lens

    inputs = token_labels(model, tokens[0].tolist())
    fig = plot_logit_lens(results, inputs, max_display_tokens=max_display_tokens, figsize=figsize, cmap=cmap,
                          save_path=save_path)
    if show:
        show_if_interactive(fig)
