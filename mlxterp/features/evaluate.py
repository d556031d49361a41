"""``mt.evaluate(model, [sae, tc], prompts)``: every dictionary's reconstruction, sparsity and loss metrics from
one batched program per chunk of prompts.

The batch is a staircase (as the patching sweeps', :mod:`mlxterp.analysis.sweep`): the clean rows run from
the start; a dictionary whose site is in layer ``L`` adds two copies of the clean rows at layer ``L``'s input
(its rows compute exactly the clean run below its site, so they are born there instead of run from the
start), and at its site one copy takes the reconstruction of the clean rows' value (the spliced run, without
the error term) and the other zeros (the zero-ablated run). Positions whose token is excluded (special tokens,
padding) keep the clean value in both. The reconstruction statistics are read off the clean rows at the site;
the losses off the logits of every row. ``K`` dictionaries cost one forward of ``1 + 2K`` row groups, each
group from its site on, instead of ``3K`` forwards.

The metrics are defined in :mod:`.tally`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from ..activations import token_rows, padded_batches
from ..analysis.programs import run_program
from ..dictionaries.dictionary import Dictionary
from ..dictionaries.sources import excluded_ids
from ..tracing.proxy import apply
from .splice import Splice, check_dictionary
from .tally import Tally, loss_metrics

KIND = "features.evaluate"


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
    """One dictionary of an evaluation: its checked splice, the layer its rows are born at, and its slot (its
    rows are group ``1 + 2 * slot`` (spliced) and ``2 + 2 * slot`` (zero-ablated) of the batch)."""

    splice: Splice
    layer: int
    slot: int
    index: int  # its position in the list the user gave

    @property
    def structure(self) -> tuple:
        d, s = self.splice.dictionary, self.splice
        shapes = tuple((n, tuple(w.shape), w.dtype) for n, w in d.inference_weights().items())
        return (d.encoder, d.decoder, s.site_in.key, s.site_out.key, self.layer, self.slot, shapes)


def evaluate(model: Any, dictionaries: Sequence[Dictionary], prompts: Sequence[Any], *, batch_size: int = 8,
             exclude: Any = "special", dense: float = 0.1, progress: bool = False) -> Any:
    """Evaluate dictionaries on held-out prompts, all of them in one batched program per chunk of prompts.

    Args:
        model: the InterpretableModel the dictionaries were trained on.
        dictionaries: SAEs and transcoders (with weights and sites), any number, at any sites inside layers.
        prompts: texts or token-id lists.
        batch_size: prompts per forward (the forward holds ``(1 + 2 * len(dictionaries)) * batch_size`` rows
            from the dictionaries' sites on).
        exclude: token ids not evaluated, as in training: ``"special"`` (the tokenizer's BOS, EOS, padding and
            other special ids), a list of ids, or None. At excluded positions the spliced and ablated rows keep
            the clean value.
        dense: a feature active on more than this fraction of the tokens counts as dense.
        progress: show a progress bar.

    Returns:
        An :class:`~mlxterp.features.results.EvaluationReport`: per dictionary ``tokens``, ``l0``, ``fve``,
        ``mse``, ``cosine``, ``shrinkage``, ``dead``, ``dense``, ``ce_clean``, ``ce_spliced``, ``ce_zero``,
        ``ce_recovered``, ``kl_spliced``, ``kl_zero``, ``kl_recovered`` (see :mod:`mlxterp.features.tally`;
        cross-entropies and KLs in nats per token, ``dead``/``dense`` fractions of the features, ``fve`` and
        the ``*_recovered`` ratios fractions where 1 is perfect), and each feature's density ``(d_sae,)``
        float32 (the fraction of evaluated tokens it is active on).

    Raises:
        TypeError, ValueError, ModuleNameError: bad dictionaries (as ``dictionaries=`` checks them), a site in no
            layer, empty prompts, bad ``batch_size``/``dense``; before any forward.
    """
    from ..views.saving import attach
    from .results import EvaluationReport

    entries = _entries(model, dictionaries)
    _check_settings(batch_size, dense)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give the held-out prompts to evaluate on")
    rows = token_rows(model, prompts)
    model._positions.check(max(len(r) for r in rows), "the longest prompt")
    excluded = excluded_ids(model, exclude)
    tallies = [Tally(e.splice.dictionary.d_sae) for e in entries]
    losses = np.zeros((2, 1 + 2 * len(entries)))
    positions = 0.0
    chunks = list(padded_batches(model, rows, batch_size))
    for ids, tokens, _ in tqdm(chunks, disable=not progress, unit="batch", desc="evaluate"):
        lengths = np.zeros(tokens.shape[0], dtype=np.int64)
        lengths[: len(ids)] = [len(rows[i]) for i in ids]
        out = _run_chunk(model, entries, tokens, lengths, excluded)
        for e, tally in zip(entries, tallies):
            tally.add(*(np.array(out[f"d{e.slot}.{k}"]) for k in ("scalars", "total", "fires")))
        losses += np.array(out["losses"], dtype=np.float64)
        positions += float(np.array(out["positions"]))
    results = sorted(zip(entries, tallies), key=lambda et: et[0].index)  # in the order given
    table = [dict(label=e.splice.dictionary.label, **t.metrics(dense), **_losses(losses, e.slot, positions))
             for e, t in results]
    density = [(t.fires / t.tokens if t.tokens else np.full(t.d_sae, np.nan)).astype(np.float32) for _, t in results]
    report = EvaluationReport(table, density, dense)
    arguments = {"dictionaries": [d.label for d in dictionaries], "batch_size": batch_size, "exclude": exclude,
                 "dense": dense}
    return attach(report, model, prompts[:16], arguments)


def _losses(losses: np.ndarray, slot: int, positions: float) -> Dict[str, float]:
    groups = [0, 1 + 2 * slot, 2 + 2 * slot]
    return loss_metrics(losses[0, groups], losses[1, groups], positions)


def _check_settings(batch_size: Any, dense: Any) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 (prompts per forward), got {batch_size!r}")
    if not isinstance(dense, (int, float)) or isinstance(dense, bool) or not 0 <= dense <= 1:
        raise ValueError(f"dense must be a fraction of the tokens in [0, 1], got {dense!r}")


def _entries(model: Any, dictionaries: Any) -> List[Entry]:
    """The dictionaries checked (as ``dictionaries=`` checks them) with the layer of each one's output site,
    in the order their rows are born (by layer; several per layer allowed, several at one site too)."""
    if isinstance(dictionaries, Dictionary) or not isinstance(dictionaries, (list, tuple)) or not dictionaries:
        raise TypeError("dictionaries must be a non-empty list of SAEs/Transcoders, e.g. mt.evaluate(model, [sae], "
                        f"prompts); got {type(dictionaries).__name__}")
    for i, d in enumerate(dictionaries):
        if not isinstance(d, Dictionary):
            raise TypeError(f"dictionaries[{i}] is a {type(d).__name__}; mt.evaluate takes SAEs and Transcoders (it "
                            "measures the spliced run without the error term, and the zero-ablated run)")
    model._sync_tree()
    splices = [check_dictionary(model, d, i) for i, d in enumerate(dictionaries)]
    layers = [_layer_of(model, s) for s in splices]
    order = sorted(range(len(splices)), key=lambda i: layers[i])
    return [Entry(splices[i], layers[i], slot, i) for slot, i in enumerate(order)]


def _layer_of(model: Any, splice: Splice) -> int:
    """The index of the layer holding the dictionary's output site (ValueError for a site in no layer)."""
    index, path = model._index, splice.site_out.path
    for i in range(len(index)):
        layer = index.layer_path(i)
        if path == layer or path.startswith(layer + "."):
            return i
    raise ValueError(f"{splice.dictionary!r}: its site {splice.site_out.name!r} is in no layer; mt.evaluate grows the "
                     "batch at the layer holding each site. Evaluate dictionaries at sites inside layers "
                     "(layers.N.resid_pre/resid_mid/resid_post, layers.N.mlp, layers.N.attn, ...)")


# -- one chunk ------------------------------------------------------------------------------------------
def _run_chunk(model: Any, entries: List[Entry], tokens: np.ndarray, lengths: np.ndarray, excluded: frozenset,
               ) -> Dict[str, mx.array]:
    height, width = tokens.shape
    real = np.arange(width)[None, :] < lengths[:, None]
    keep = real & ~np.isin(tokens, list(excluded)) if excluded else real
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    next_real = np.zeros_like(real)
    next_real[:, :-1] = real[:, 1:]
    values = {"keep": mx.array(keep[..., None].astype(np.float32)), "targets": mx.array(targets.astype(np.int32)),
              "ce_keep": mx.array((keep & next_real).astype(np.float32))}
    for e in entries:
        values.update({f"w{e.slot}_{n}": w for n, w in e.splice.dictionary.inference_weights().items()})
    key = (tuple(e.structure for e in entries), height, width)
    return run_program(model, KIND, key, mx.array(tokens), values,
                       lambda params: _record(model, entries, params, height))


def _record(model: Any, entries: List[Entry], params: Dict[str, Any], height: int) -> None:
    """The body of an evaluation program (see the module docstring), inside its trace."""
    from ..tracing import context

    trace = context.current(model, "evaluate")
    keep = params["keep"]
    for layer in sorted({e.layer for e in entries}):
        born = [e for e in entries if e.layer == layer]
        path = model._index.layer_path(layer)
        x = trace.module_value(path, 0, "input")
        trace.write(path, 0, "input", apply(grow_rows, x, height, 2 * len(born)))
        for e in born:
            _splice_rows(trace, e, params, keep, height)
    logits = model.output
    losses = apply(logit_losses, logits, params["targets"], params["ce_keep"], 1 + 2 * len(entries))
    losses[0].save("losses")
    losses[1].save("positions")


def _splice_rows(trace: Any, e: Entry, params: Dict[str, Any], keep: Any, height: int) -> None:
    s, d = e.splice, e.splice.dictionary
    weights = {n: params[f"w{e.slot}_{n}"] for n in d.inference_weights()}
    x = trace.module_value(s.site_in.path, 0, s.site_in.phase)[:height]
    y = x if s.site_out is s.site_in else trace.module_value(s.site_out.path, 0, s.site_out.phase)[:height]
    features = apply(d.encoder, x, weights)
    reconstruction = apply(d.decoder, features, weights)
    statistics = apply(site_statistics, y, reconstruction, features, keep)
    for i, name in enumerate(("scalars", "total", "fires")):
        statistics[i].save(f"d{e.slot}.{name}")
    value = trace.module_value(s.site_out.path, 0, s.site_out.phase)
    trace.write(s.site_out.path, 0, s.site_out.phase,
                apply(splice_rows, value, reconstruction, keep, height * (1 + 2 * e.slot), height))


# -- the functions the program runs (MLX) ----------------------------------------------------------------
def grow_rows(x: mx.array, rows: int, copies: int) -> mx.array:
    """``x`` with ``copies`` copies of its first ``rows`` rows (the clean run) appended along the batch axis."""
    return mx.concatenate([x] + [x[:rows]] * copies, axis=0)


def splice_rows(value: mx.array, reconstruction: mx.array, keep: mx.array, start: int, rows: int) -> mx.array:
    """``value`` with its rows ``[start, start + rows)`` replaced by the reconstruction and the next ``rows``
    rows by zeros, where ``keep`` (``(rows, seq, 1)``) is set; elsewhere they keep their value."""
    where = keep > 0
    spliced = mx.where(where, reconstruction.astype(value.dtype), value[start:start + rows])
    ablated = mx.where(where, mx.zeros((), value.dtype), value[start + rows:start + 2 * rows])
    return mx.concatenate([value[:start], spliced, ablated, value[start + 2 * rows:]], axis=0)


def site_statistics(y: mx.array, reconstruction: mx.array, features: mx.array, keep: mx.array) -> tuple:
    """Sums over the kept positions: ``[tokens, squared error, sum of squares about the batch's mean, cosine,
    norm ratio, active features]``, the sum of ``y`` (``(d,)``) and each feature's count (``(d_sae,)``)."""
    y = y.astype(mx.float32)
    n = keep.sum()
    total = (y * keep).sum(axis=(0, 1))
    mean = total / mx.maximum(n, 1.0)
    squared = (mx.square(y - reconstruction).sum(axis=-1, keepdims=True) * keep).sum()
    m2 = (mx.square(y - mean).sum(axis=-1, keepdims=True) * keep).sum()
    norm_y = mx.linalg.norm(y, axis=-1, keepdims=True)
    norm_r = mx.linalg.norm(reconstruction, axis=-1, keepdims=True)
    tiny = mx.array(1e-12)
    cosine = ((y * reconstruction).sum(axis=-1, keepdims=True) / mx.maximum(norm_y * norm_r, tiny) * keep).sum()
    ratio = (norm_r / mx.maximum(norm_y, tiny) * keep).sum()
    active = features > 0
    count = (active.sum(axis=-1, keepdims=True) * keep).sum()
    fires = (active * keep).sum(axis=(0, 1))
    return mx.stack([n, squared, m2, cosine, ratio, count.astype(mx.float32)]), total, fires.astype(mx.float32)


def logit_losses(logits: mx.array, targets: mx.array, keep: mx.array, groups: int) -> tuple:
    """Per row group (clean, then each dictionary's spliced and ablated rows): the sums over the kept positions
    of the next token's cross-entropy and of ``KL(clean || group)``, ``(2, groups)``; and the positions.

    With ``lse`` the log-partition of a group's logits ``x``: ``ce = lse - x[target]`` and ``KL = sum_v p0 (x0 -
    lse0) - sum_v p0 (x - lse) = (p0 . x0 - lse0) - (p0 . x - lse)``, so no log-softmax array is built."""
    x = logits.astype(mx.float32)
    x = x.reshape(groups, -1, *x.shape[1:])
    lse = _logsumexp(x)
    index = mx.broadcast_to(targets[None, ..., None], (groups,) + targets.shape + (1,))
    ce = ((lse - mx.take_along_axis(x, index, axis=-1)[..., 0]) * keep).sum(axis=(1, 2))
    p0 = _exp(x[0] - lse[0][..., None])
    cross = (x * p0).sum(axis=-1) - lse  # sum_v p0 * log p_group
    kl = ((cross[0] - cross) * keep).sum(axis=(1, 2))
    return mx.stack([ce, kl]), keep.sum()


LOG2_E = 1.4426950408889634


def _exp(x: mx.array) -> mx.array:
    """``exp(x)`` as ``2 ** (x log2 e)``: MLX's CPU ``exp`` is 2.4x slower than its ``power`` (measured: 45 ms
    against 18 ms for 3.7M floats), and the vocabulary's exponentials are most of an evaluation's loss
    computation; the relative error added, about ``|x| 2**-24``, is far below float32 logits' own."""
    return mx.power(mx.array(2.0, dtype=x.dtype), x * LOG2_E)


def _logsumexp(x: mx.array) -> mx.array:
    top = mx.stop_gradient(x.max(axis=-1, keepdims=True))
    return mx.log(_exp(x - top).sum(axis=-1)) + top[..., 0]
