"""Feature circuits: attribution of every feature and error node of several dictionaries at once, and the
faithfulness of circuits made of the best nodes (Marks et al. 2024, "Sparse Feature Circuits").

**Attribution.** Every dictionary is spliced with its error term, so the forward is the model's own, and the
gradient of the metric at each dictionary's features and error comes from one forward and one backward of one
program (:mod:`mlxterp.features.gradients`). With corrupted prompts (``mode="patching"``), feature ``f`` of a
dictionary at position ``t`` scores ``sum over prompts of (f_clean - f_corrupted) * g`` with ``g`` the gradient in
the corrupted run, the first-order change of the metric when that feature alone takes its clean value there; an
error node scores ``(e_clean - e_corrupted) . g_e``, its whole ``d_out``-wide vector at once. With ``steps > 1``
the gradient is averaged over ``steps`` points ``k / steps`` (``k = 0 .. steps - 1``) of the path from the
corrupted to the clean input embeddings, as EAP-IG takes it: the points and the clean run are ``steps + 1``
variants of one folded forward and backward. Without corrupted prompts (``mode="ablation"``) the gradient is
taken in the clean run and a node scores ``-f * g`` (``-e . g_e``): zeroing it, to first order. The metric is
averaged over the prompts; scores are summed over them, so they are changes of the mean metric.

A gradient at a dictionary's features is the total effect: it flows through every later dictionary's features
and error terms (a spliced site's value is ``x`` plus its parts' changes, whose derivative in ``x`` is 1), as a
forward written by hand, ``x -> decode(encode(x)) + (x - decode(encode(x)))``, differentiates it.

**Faithfulness.** A circuit keeps its nodes and ablates every other: each dictionary's features outside the
circuit take their ablated value (``ablation="corrupted"``: the corrupted run's value at that position;
``"mean"``: their mean over the corrupted prompts; ``"zero"``: 0), and so do its error terms outside it
(``errors="ablate"``), or every error term keeps the run's own (``errors="keep"``). Kept nodes take their value
in the patched run itself, so an ablation upstream changes what a later dictionary encodes. The circuits, the
empty circuit (every node ablated: the baseline) and the full one (the clean run, exactly) are row blocks of
one forward, and faithfulness is ``(m(circuit) - m(empty)) / (m(full) - m(empty))``.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..analysis.display import show_if_interactive
from ..analysis.metrics import Metric
from ..analysis.validate import token_labels
from ..dictionaries import sites
from ..features.gradients import PartGradients, node_splices, part_gradients
from ..features.splice import Splice, splice
from ..tracing.program import param
from ..tracing.proxy import apply
from ..views.saving import attach
from .faithfulness import FaithfulnessCurve
from .feature_nodes import FeatureCircuit, FeatureScores
from .inputs import check_sizes, check_steps, circuit_metric, prompt_pair, prompt_rows

ABLATIONS = ("corrupted", "mean", "zero")
ERRORS = ("ablate", "keep")


def feature_attribution(model: Any, dictionaries: Sequence[Any], clean: Any, corrupted: Any = None,
                        metric: Any = "logit_diff", *, steps: int = 1, target: Any = None,
                        foil: Any = None) -> FeatureScores:
    """Attribution scores of every feature and error node of several dictionaries, from one forward and one
    backward with all of them spliced (see the module docstring).

    Args:
        model: the InterpretableModel.
        dictionaries: SAEs and transcoders with weights and sites (at one layer or several).
        clean: the clean prompt(s): a prompt, prompts of one token length, or a ``(batch, seq)`` token array.
        corrupted: the corrupted prompt(s), as many as the clean ones (or one for all), of the same token
            length: patching mode. ``None``: ablation mode on the clean prompts.
        metric: a score of the last position's logits: ``"logit_diff"`` (``target`` minus ``foil``),
            ``"logprob"``, ``"prob"``, or a function ``logits (rows, vocab) -> (rows,)``.
        steps: points of the integrated gradients on the input path (patching mode only; 1: attribution
            patching).
        target: the target token (text or id); default: the first clean prompt's prediction.
        foil: ``"logit_diff"``'s foil token; default: the first corrupted prompt's prediction (required in
            ablation mode).

    Returns:
        :class:`mlxterp.circuits.FeatureScores`: ``.top(k)`` across every dictionary, ``.features`` /
        ``.errors`` (per dictionary ``(seq, d_sae)`` and ``(seq,)`` float32), ``.circuit(n_nodes=...)``,
        ``.plot()``, ``.save(path)``.

    Raises:
        TypeError: ``dictionaries`` not a list of SAEs/transcoders.
        ValueError: a dictionary at a site the model lacks (or of another width, without weights), prompts of
            different token lengths, ``steps > 1`` without corrupted prompts, a distance metric or one that
            ignores the logits, ``logit_diff`` without ``foil`` in ablation mode; all before any forward.
    """
    splices = node_splices(model, dictionaries)
    steps = check_steps(steps)
    if corrupted is None and steps != 1:
        raise ValueError(f"steps={steps}: integrated gradients run from the corrupted to the clean inputs; give "
                         "corrupted= prompts, or steps=1 for ablation scores")
    clean_t, corrupted_t = node_prompts(model, clean, corrupted)
    found = node_metric(model, metric, clean_t, corrupted_t, target, foil, corrupted is None)
    g, features, errors = node_scores(model, splices, clean_t, corrupted_t, found, steps, corrupted is None)
    mx.eval(features, errors, g.values)
    values = np.array(g.values, dtype=np.float64)
    out = FeatureScores(labels(splices), token_labels(model, clean_t[0].tolist()),
                        [np.array(f, dtype=np.float32) for f in features], [np.array(e, dtype=np.float32) for e in errors],
                        "ablation" if corrupted is None else "patching", steps, str(found), float(values[-1]),
                        float("nan") if corrupted is None else float(values[0]))
    return attach(out, model, [clean] if corrupted is None else [clean, corrupted],
                  {"dictionaries": out.dictionaries, "metric": str(found), "steps": steps, "target": target,
                   "foil": foil})


def node_scores(model: Any, splices: Sequence[Splice], clean: mx.array, corrupted: mx.array, metric: Metric,
                steps: int, ablation: bool) -> Tuple[PartGradients, List[mx.array], List[mx.array]]:
    """The parts' gradients (variant 0: the run the gradient is taken in; the last: the clean run) and every
    node's score, per dictionary ``(seq, d_sae)`` and ``(seq,)`` (see the module docstring)."""
    if ablation:
        g = part_gradients(model, splices, clean, metric, [1.0])
        features = [-(f[0] * gf[0]).sum(axis=0) for f, gf in zip(g.features, g.grad_features)]
        errors = [-(e[0] * ge[0]).sum(axis=(0, 2)) for e, ge in zip(g.errors, g.grad_errors)]
        return g, features, errors
    alphas = [k / steps for k in range(steps)] + [1.0]
    g = part_gradients(model, splices, corrupted, metric, [1.0 / steps] * steps + [0.0], source=clean,
                       alphas=alphas)  # the last variant is the clean run (weight 0): its parts
    features = [((f[-1] - f[0]) * gf.sum(axis=0)).sum(axis=0) for f, gf in zip(g.features, g.grad_features)]
    errors = [((e[-1] - e[0]) * ge.sum(axis=0)).sum(axis=(0, 2)) for e, ge in zip(g.errors, g.grad_errors)]
    return g, features, errors


def feature_faithfulness(model: Any, dictionaries: Sequence[Any], circuits: Any, clean: Any, corrupted: Any = None,
                         metric: Any = "logit_diff", *, sizes: Sequence[int] = (10, 20, 50, 100, 200, 500),
                         ablation: str = "corrupted", errors: str = "ablate", target: Any = None, foil: Any = None,
                         plot: bool = False, save_path: Any = None) -> FaithfulnessCurve:
    """The faithfulness of feature circuits: each circuit, the empty and the full circuit as row blocks of one
    forward with every dictionary spliced (see the module docstring).

    Args:
        model: the InterpretableModel.
        dictionaries: the dictionaries the circuits' nodes belong to, in the same order.
        circuits: :class:`mlxterp.circuits.FeatureScores` (its best ``n`` nodes for each ``n`` in ``sizes``), a
            :class:`mlxterp.circuits.FeatureCircuit`, or a list of them.
        clean: the clean prompt(s) (the circuits run on them).
        corrupted: the corrupted prompt(s), of the same token length (``None`` with ``ablation="zero"``).
        metric: a score of the last position's logits, as in :func:`feature_attribution`.
        sizes: numbers of nodes (with ``FeatureScores``).
        ablation: what a node outside the circuit becomes: ``"corrupted"`` (its value in the corrupted run),
            ``"mean"`` (its mean over the corrupted prompts) or ``"zero"``.
        errors: ``"ablate"`` (error nodes outside the circuit are ablated like features) or ``"keep"`` (every
            error term keeps its value in the run).
        target: the metric's target token; default: the first clean prompt's prediction.
        foil: ``"logit_diff"``'s foil token; default: the first corrupted prompt's prediction.
        plot: draw the curve (shown only with an interactive matplotlib backend).
        save_path: write the curve as a PNG here.

    Returns:
        :class:`mlxterp.circuits.FaithfulnessCurve` (``unit="nodes"``): ``.sizes`` (nodes per circuit),
        ``.values`` (the metric), ``.faithfulness`` (float64 fractions: 1 is the full model), ``.clean`` (the
        full circuit: the clean run), ``.baseline`` (every node ablated), ``.plot()``, ``.save(path)``.

    Raises:
        ValueError: circuits of other dictionaries or another prompt length, a bad ``ablation`` or ``errors``,
            and as :func:`feature_attribution`; all before any forward.
    """
    splices = node_splices(model, dictionaries)
    ablation, errors = _choice(ablation, ABLATIONS, "ablation"), _choice(errors, ERRORS, "errors")
    if corrupted is None and ablation != "zero":
        raise ValueError(f"ablation={ablation!r} takes its values from corrupted prompts: give corrupted=, or use "
                         "ablation='zero'")
    found_circuits = _circuits(circuits, sizes)
    clean_t, corrupted_t = node_prompts(model, clean, corrupted, same_rows=ablation != "mean")
    found = node_metric(model, metric, clean_t, corrupted_t, target, foil, corrupted is None)
    for c in found_circuits:
        _check_circuit(c, splices, clean_t.shape[1])
    keeps = [(c.features, c.errors) for c in found_circuits]
    values = _run_circuits(model, splices, clean_t, _sources(model, splices, clean_t, corrupted_t, ablation),
                           keeps, found, errors == "keep")
    out = FaithfulnessCurve([len(c) for c in found_circuits], values[:-2], float(values[-1]), float(values[-2]),
                            ablation, str(found), unit="nodes")
    attach(out, model, [clean] if corrupted is None else [clean, corrupted],
           {"dictionaries": labels(splices), "sizes": out.sizes, "metric": str(found), "ablation": ablation,
            "errors": errors, "target": target, "foil": foil})
    if plot or save_path is not None:
        fig = out.plot(save_path)
        if plot:
            show_if_interactive(fig)
    return out


def labels(splices: Sequence[Splice]) -> List[str]:
    """The dictionaries' labels (``architecture@site``), numbered where two are alike (``#1``)."""
    raw = [s.dictionary.label for s in splices]
    return [f"{label}#{i}" if raw.count(label) > 1 else label for i, label in enumerate(raw)]


def node_prompts(model: Any, clean: Any, corrupted: Any, same_rows: bool = True) -> Tuple[mx.array, mx.array]:
    """Clean and corrupted token rows of one length (the clean rows twice without corrupted prompts)."""
    if corrupted is None:
        rows = prompt_rows(model, clean, "clean")
        return rows, rows
    return prompt_pair(model, clean, corrupted, same_rows=same_rows)


def node_metric(model: Any, metric: Any, clean: mx.array, corrupted: mx.array, target: Any, foil: Any,
            ablation: bool) -> Metric:
    if ablation and isinstance(metric, str) and metric == "logit_diff" and foil is None:
        raise ValueError("metric='logit_diff' without corrupted prompts needs foil= (its default is the corrupted "
                         "prompt's prediction); give foil=, or another metric such as 'logprob'")
    return circuit_metric(model, metric, clean, corrupted, target, foil)


def _choice(value: Any, choices: tuple, arg: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{arg}: expected one of {choices}, got {value!r}")
    return value


def _circuits(circuits: Any, sizes: Sequence[int]) -> List[FeatureCircuit]:
    """The circuits to evaluate: the best ``n`` nodes of scores for each size, or the circuits given."""
    if isinstance(circuits, FeatureScores):
        return [circuits.circuit(n_nodes=n) for n in check_sizes(sizes, circuits.n_nodes, "nodes")]
    found = [circuits] if isinstance(circuits, FeatureCircuit) else circuits
    if not isinstance(found, (list, tuple)) or not found or not all(isinstance(c, FeatureCircuit) for c in found):
        raise ValueError(f"circuits: expected FeatureScores, a FeatureCircuit or a non-empty list of them, got "
                         f"{type(circuits).__name__}")
    return list(found)


def _check_circuit(circuit: FeatureCircuit, splices: Sequence[Splice], seq: int) -> None:
    if circuit.dictionaries != labels(splices):
        raise ValueError(f"circuits: this circuit's nodes belong to dictionaries {circuit.dictionaries}, but "
                         f"dictionaries= are {labels(splices)}; pass the dictionaries it was scored with, in order")
    for label, mask, s in zip(circuit.dictionaries, circuit.features, splices):
        if mask.shape != (seq, s.dictionary.d_sae):
            raise ValueError(f"circuits: {label}'s nodes are {mask.shape} (positions, features), but the prompts "
                             f"have {seq} tokens and the dictionary {s.dictionary.d_sae} features")


def _sources(model: Any, splices: Sequence[Splice], clean: mx.array, corrupted: mx.array,
             ablation: str) -> List[Tuple[mx.array, mx.array]]:
    """Per dictionary, the ablated ``(features, error)`` value ``(rows, seq, width)`` of every node, for the
    clean rows: the corrupted run's, its mean over the corrupted prompts, or zeros."""
    if ablation == "zero":
        return [(mx.zeros(clean.shape + (s.dictionary.d_sae,)), mx.zeros(clean.shape + (s.dictionary.d_out,)))
                for s in splices]
    with model.trace(corrupted, capture="saved", dictionaries=_specs(splices)) as tr:
        for i, s in enumerate(splices):
            parts = getattr(sites.read(model, s.site_in), s.name)
            parts.features.save(f"features{i}")
            parts.error.save(f"error{i}")
    out = []
    for i in range(len(splices)):
        f, e = tr.saved_values[f"features{i}"], tr.saved_values[f"error{i}"]
        if ablation == "mean":
            f, e = f.mean(axis=0, keepdims=True), e.mean(axis=0, keepdims=True)
        out.append((mx.broadcast_to(f, clean.shape + f.shape[2:]), mx.broadcast_to(e, clean.shape + e.shape[2:])))
    return out


def _specs(splices: Sequence[Splice]) -> list:
    return [splice(s.dictionary, name=s.name) for s in splices]


def _run_circuits(model: Any, splices: Sequence[Splice], clean: mx.array, sources: List[Tuple[mx.array, mx.array]],
                  keeps: List[tuple], metric: Metric, keep_errors: bool) -> np.ndarray:
    """The metric (mean over the prompts) of each circuit, then of the empty and the full circuit: ``V`` row
    blocks of one forward on the clean prompts, each dictionary's parts outside the circuit replaced by their
    ablated values."""
    seq = clean.shape[1]
    empty = ([np.zeros((seq, s.dictionary.d_sae), bool) for s in splices], [np.zeros(seq, bool) for _ in splices])
    full = ([np.ones((seq, s.dictionary.d_sae), bool) for s in splices], [np.ones(seq, bool) for _ in splices])
    variants = list(keeps) + [empty, full]
    rows, k = clean.shape[0], len(variants)
    with model.trace(mx.concatenate([clean] * k, axis=0), capture="saved", dictionaries=_specs(splices)) as tr:
        for i, s in enumerate(splices):
            parts = getattr(sites.read(model, s.site_in), s.name)
            keep_f = _masks([v[0][i] for v in variants], rows)
            keep_e = _masks([np.ones(seq, bool) if keep_errors else v[1][i] for v in variants], rows)[..., None]
            tiled = [mx.concatenate([a] * k, axis=0) for a in sources[i]]
            parts.features = apply(_select, parts.features, param(f"source_f{i}", tiled[0]),
                                   param(f"keep_f{i}", keep_f))
            parts.error = apply(_select, parts.error, param(f"source_e{i}", tiled[1]), param(f"keep_e{i}", keep_e))
        model.output[:, -1].save("logits")
    logits = tr.saved_values["logits"].reshape(k, rows, -1)
    values = mx.stack([metric.score(logits[j]).mean() for j in range(k)])
    return np.array(values, dtype=np.float64)


def _masks(masks: List[np.ndarray], rows: int) -> mx.array:
    """Per-variant masks ``(seq, ...)`` as a float32 ``(variants * rows, seq, ...)`` array (each repeated for
    the variant's rows)."""
    return mx.array(np.repeat(np.stack(masks).astype(np.float32), rows, axis=0))


def _select(value: mx.array, source: mx.array, keep: mx.array) -> mx.array:
    """``value`` where ``keep`` is 1, else ``source`` (exactly either)."""
    return mx.where(keep > 0, value, source.astype(value.dtype))
