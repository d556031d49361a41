"""Top-activating contexts of a dictionary's features and their firing density, computed live from prompts.

The prompts run in right-padded batches through one program per batch shape that stops after the
dictionary's input site: it encodes the site's value, and for every feature keeps its ``k`` largest
activations of the batch (over evaluated tokens: special tokens and padding excluded, as in training) with
the activations of the ``before + 1 + after`` tokens around each, and counts where each feature fires. The
batches' top ``k`` are merged on the host. The token ids of each window come from the prompts themselves.

Why live rather than from an activation store: a tokens store keeps each prompt's length and hash but not its
token ids, so a context could not be shown without the prompts; and encoding from the store would not save
the forward in the common case where the prompts are at hand (the forward stops at the site).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from ..activations import token_rows, padded_batches
from ..analysis.programs import run_program
from ..analysis.validate import check_positive_int
from ..dictionaries.sources import excluded_ids
from ..tracing.proxy import apply
from .splice import Splice, check_dictionary

KIND = "features.contexts"


def top_contexts(model: Any, dictionary: Any, prompts: Sequence[Any], *, features: Optional[Sequence[int]] = None,
                 k: int = 10, window: Tuple[int, int] = (8, 4), logits: int = 10, batch_size: int = 8,
                 exclude: Any = "special", progress: bool = False) -> Any:
    """The ``k`` contexts where each feature is most active, each feature's density, and its logit effects.

    Args:
        model: the InterpretableModel.
        dictionary: an SAE or transcoder (its features are read at its input site).
        prompts: texts or token-id lists.
        features: the features to report (default: all of them); densities cover every feature.
        k: contexts per feature.
        window: ``(before, after)``: tokens shown around each context's token.
        logits: tokens promoted and suppressed listed per feature (:func:`mlxterp.features.logit_effects`;
            0 for none).
        batch_size: prompts per forward.
        exclude: token ids never counted (``"special"``, a list of ids, or None), as in training.
        progress: show a progress bar.

    Returns:
        A :class:`~mlxterp.features.pages.FeatureContexts`: activations ``(n, k)`` float32 in the dictionary's
        feature units, densities ``(d_sae,)`` float32 as fractions of the evaluated tokens (``.top(feature)``,
        ``.density``, ``.plot(feature)``, ``.save_html(path, feature=...)``: the feature page; saveable).

    Raises:
        ValueError, TypeError, ModuleNameError: a bad dictionary (as ``dictionaries=`` checks it), feature
            indices out of range, a bad ``k``, ``window`` or ``batch_size``, empty prompts; before any forward.
    """
    from ..views.saving import attach
    from .logits import logit_effects
    from .pages import FeatureContexts

    splice = check_dictionary(model, dictionary, 0)
    ids = _features(features, dictionary.d_sae)
    k = check_positive_int(k, "k")
    batch_size = check_positive_int(batch_size, "batch_size")
    before, after = _window(window)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give the prompts to look for contexts in")
    rows = token_rows(model, prompts)
    excluded = excluded_ids(model, exclude)
    best = Best(len(ids), k, before + 1 + after)
    fires, tokens = np.zeros(dictionary.d_sae), 0.0
    for chunk, batch, _ in tqdm(list(padded_batches(model, rows, batch_size)), disable=not progress, unit="batch",
                                desc="contexts"):
        lengths = np.zeros(batch.shape[0], dtype=np.int64)
        lengths[: len(chunk)] = [len(rows[i]) for i in chunk]
        out = _run(model, splice, ids, batch, lengths, excluded, min(k, batch.size), (before, after))
        fires += np.array(out["fires"], dtype=np.float64)
        tokens += float(np.array(out["tokens"]))
        best.merge(np.array(out["values"]), _where(np.array(out["index"]), chunk, batch.shape[1]),
                   np.array(out["windows"]))
    contexts = best.contexts(rows, before, after)
    effects = logit_effects(model, dictionary, ids, k=logits) if logits else None
    labels = {int(t): _label(model, t) for t in np.unique(contexts["tokens"]) if t >= 0}
    result = FeatureContexts(dictionary.label, ids, contexts["values"], contexts["prompts"], contexts["positions"],
                             contexts["tokens"], contexts["activations"], (fires / max(tokens, 1.0)).astype(np.float32),
                             int(tokens), labels, before, effects)
    arguments = {"dictionary": dictionary.label, "features": None if features is None else list(ids), "k": k,
                 "window": [before, after], "logits": logits, "batch_size": batch_size, "exclude": exclude}
    return attach(result, model, prompts[:16], arguments)


def _features(features: Any, d_sae: int) -> np.ndarray:
    if features is None:
        return np.arange(d_sae)
    ids = np.asarray(list(features) if not isinstance(features, int) else [features])
    if ids.size == 0 or ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= d_sae:
        raise ValueError(f"features: expected feature indices in [0, {d_sae - 1}] (the dictionary has {d_sae}), "
                         f"got {features!r}")
    return ids.astype(np.int64)


def _window(window: Any) -> Tuple[int, int]:
    if not (isinstance(window, (tuple, list)) and len(window) == 2 and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in window)):
        raise ValueError(f"window: expected (before, after), two ints >= 0 (tokens shown around each context's "
                         f"token), got {window!r}")
    return int(window[0]), int(window[1])


def _label(model: Any, token: int) -> str:
    return model.token_to_str(int(token)) if model.tokenizer is not None else str(int(token))


def _where(index: np.ndarray, chunk: np.ndarray, width: int) -> np.ndarray:
    """Flat positions of a batch ``(features, k)`` as ``(prompt number, position)`` pairs ``(features, k, 2)``
    (prompt -1 for a padding row)."""
    rows, positions = index // width, index % width
    prompt = np.full(rows.shape, -1, dtype=np.int64)
    real = rows < len(chunk)
    prompt[real] = np.asarray(chunk)[rows[real]]
    return np.stack([prompt, positions], axis=-1)


class Best:
    """The running ``k`` largest activations of each feature, with where they are and their windows."""

    def __init__(self, n: int, k: int, span: int):
        self.values = np.full((n, k), -np.inf, dtype=np.float32)
        self.where = np.full((n, k, 2), -1, dtype=np.int64)
        self.windows = np.full((n, k, span), np.nan, dtype=np.float32)

    def merge(self, values: np.ndarray, where: np.ndarray, windows: np.ndarray) -> None:
        values = np.concatenate([self.values, values], axis=1)
        order = np.argsort(-values, axis=1, kind="stable")[:, : self.values.shape[1]]
        self.values = np.take_along_axis(values, order, axis=1)
        self.where = np.take_along_axis(np.concatenate([self.where, where], axis=1), order[..., None], axis=1)
        self.windows = np.take_along_axis(np.concatenate([self.windows, windows], axis=1), order[..., None], axis=1)

    def contexts(self, rows: List[List[int]], before: int, after: int) -> Dict[str, np.ndarray]:
        """Arrays of the kept contexts; a slot a feature never filled (it fired fewer than ``k`` times, or
        never above 0) has prompt -1, NaN activations and token -1."""
        filled = np.isfinite(self.values) & (self.values > 0)
        tokens = np.full(self.windows.shape, -1, dtype=np.int64)
        for f, j in zip(*np.nonzero(filled)):
            p, t = self.where[f, j]
            for o in range(-before, after + 1):
                if 0 <= t + o < len(rows[p]):
                    tokens[f, j, o + before] = rows[p][t + o]
        where = np.where(filled[..., None], self.where, -1)
        return {"values": np.where(filled, self.values, np.nan).astype(np.float32), "prompts": where[..., 0],
                "positions": where[..., 1], "tokens": tokens,
                "activations": np.where(filled[..., None], self.windows, np.nan).astype(np.float32)}


# -- the program ---------------------------------------------------------------------------------------
def _run(model: Any, splice: Splice, ids: np.ndarray, tokens: np.ndarray, lengths: np.ndarray, excluded: frozenset,
         k: int, window: Tuple[int, int]) -> Dict[str, mx.array]:
    width = tokens.shape[1]
    real = np.arange(width)[None, :] < lengths[:, None]
    keep = real & ~np.isin(tokens, list(excluded)) if excluded else real
    d = splice.dictionary
    values = {"keep": mx.array(keep.astype(np.float32)), "ids": mx.array(ids.astype(np.int32)),
              **{f"w_{n}": w for n, w in d.inference_weights().items()}}
    shapes = tuple((n, tuple(w.shape), w.dtype) for n, w in d.inference_weights().items())
    key = (d.encoder, splice.site_in.key, shapes, len(ids), k, window, tokens.shape)
    return run_program(model, KIND, key, mx.array(tokens), values, lambda p: _record(model, splice, p, k, window))


def _record(model: Any, splice: Splice, params: Dict[str, Any], k: int, window: Tuple[int, int]) -> None:
    from ..dictionaries import sites

    d = splice.dictionary
    x = sites.read(model, splice.site_in)
    weights = {n: params[f"w_{n}"] for n in d.inference_weights()}
    features = apply(d.encoder, x, weights)
    out = apply(best_in_batch, features, params["keep"], params["ids"], k, window[0], window[1])
    for i, name in enumerate(("values", "index", "windows", "fires", "tokens")):
        out[i].save(name)


def best_in_batch(features: mx.array, keep: mx.array, ids: mx.array, k: int, before: int, after: int) -> tuple:
    """For features ``(rows, seq, d_sae)``: the ``k`` largest activations of each feature in ``ids`` over the
    kept positions ``(n, k)``, their flat positions ``(n, k)``, the feature's activations in the window around
    each ``(n, k, before + 1 + after)`` (NaN outside the row or at a position not kept), each feature's firing
    count ``(d_sae,)`` and the kept tokens."""
    rows, seq, _ = features.shape
    kept = keep[..., None] > 0
    fires = (mx.logical_and(features > 0, kept)).sum(axis=(0, 1)).astype(mx.float32)
    chosen = mx.take(features, ids, axis=-1).reshape(rows * seq, -1).T  # (n, rows * seq)
    ranked = mx.where(keep.reshape(1, -1) > 0, chosen, -mx.inf)
    index = mx.argpartition(-ranked, k - 1, axis=-1)[:, :k]
    values = mx.take_along_axis(ranked, index, axis=-1)
    offsets = mx.arange(-before, after + 1)
    row, position = index // seq, index % seq
    near = position[..., None] + offsets  # (n, k, span)
    inside = mx.logical_and(near >= 0, near < seq)
    flat = row[..., None] * seq + mx.clip(near, 0, seq - 1)
    shown = mx.take_along_axis(mx.where(keep.reshape(1, -1) > 0, chosen, mx.nan), flat.reshape(flat.shape[0], -1),
                               axis=-1).reshape(flat.shape)
    return values, index, mx.where(inside, shown, mx.nan), fires, keep.sum()
