"""Edges between feature nodes: how much of a downstream node's effect on the metric goes through each node of
an upstream dictionary (Marks et al. 2024, "Sparse Feature Circuits", the attribution-patching edge effect).

For upstream node ``u`` (a feature of dictionary ``U`` at a position, or ``U``'s error node there) and downstream
node ``d`` (a feature of ``D``, or ``D``'s error node)::

    edge(u -> d) = sum over prompts of  (d metric / d d) . (d d / d u) . (u_clean - u_corrupted)

in patching mode (both derivatives in the corrupted run), and with ``-u`` in place of the difference in ablation
mode (both in the clean run). ``d metric / d d`` is the node gradient of
:func:`mlxterp.circuits.feature_attribution`, held fixed; ``d d / d u`` is the derivative of ``d``'s value in
the model's own forward with ``U`` spliced with its error term, through every path between the two sites (the
total effect: any dictionary between them, spliced with its error term, passes the gradient unchanged). An
error node is its whole ``d_out``-wide vector: a downstream error node's gradient is a vector, contracted with
``d d / d u``, and an upstream error node's change is contracted with its row of the Jacobian.

The downstream nodes are the ``top`` nodes of ``D`` by absolute node score. Each is one vector-Jacobian product
of ``D``'s parts with respect to ``U``'s parts, its cotangent the node's gradient at its node alone; the nodes
are ``top`` row blocks of one folded batch (the prompt rows repeated), so one forward and one backward give
every edge.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np

from ..analysis.programs import cached_program, keep_program
from ..analysis.validate import token_labels
from ..dictionaries import sites
from ..features.gradients import node_splices, structure, weight_params
from ..features.splice import Splice, splice
from ..inputs import is_int
from ..tracing.program import param
from ..views.saving import attach
from .feature_edge_scores import FeatureEdges
from .features import labels, node_metric, node_prompts, node_scores

KIND = "circuits.feature_edges"


def feature_edges(model: Any, dictionaries: Sequence[Any], clean: Any, corrupted: Any = None,
                  metric: Any = "logit_diff", *, upstream: Union[int, str] = 0, downstream: Union[int, str] = 1,
                  top: int = 20, target: Any = None, foil: Any = None) -> FeatureEdges:
    """Edge scores from every node of an upstream dictionary to the best ``top`` nodes of a downstream one (see
    the module docstring).

    Cost: one forward and backward with every dictionary spliced (the node gradients, as
    :func:`feature_attribution` takes them: two variants in patching mode), then one forward and one backward
    of ``top * rows`` rows with ``U`` and ``D`` spliced (each downstream node a row block); memory
    grows with ``top`` as the batch does.

    Args:
        model: the InterpretableModel.
        dictionaries: SAEs and transcoders with weights and sites, as :func:`feature_attribution` takes them.
        clean: the clean prompt(s): a prompt, prompts of one token length, or a ``(batch, seq)`` token array.
        corrupted: the corrupted prompt(s), of the same token length: patching mode; ``None``: ablation mode.
        metric: a score of the last position's logits, as in :func:`feature_attribution`.
        upstream: the upstream dictionary: its index in ``dictionaries`` or its label (``architecture@site``).
        downstream: the downstream dictionary (index or label); it must read its site after ``upstream``
            writes its own.
        top: how many of the downstream dictionary's nodes (largest absolute node score, error nodes
            competing with features) to take edges into.
        target: the metric's target token; default: the first clean prompt's prediction.
        foil: ``"logit_diff"``'s foil token; default: the first corrupted prompt's prediction (required in
            ablation mode).

    Returns:
        :class:`mlxterp.circuits.FeatureEdges`: ``.top(k)`` (``(upstream node, downstream node, score)``),
        ``.features`` ``(top, seq, d_sae)`` and ``.errors`` ``(top, seq)`` float32 (edges from the upstream
        dictionary's features and error nodes into each downstream node), ``.plot()``, ``.save(path)``.

    Raises:
        KeyError: an upstream or downstream dictionary that is not in ``dictionaries``.
        ValueError: the downstream dictionary not after the upstream one, ``top`` not an int from 1 to the
            downstream dictionary's nodes, and as :func:`feature_attribution`; all before any forward.
    """
    splices = node_splices(model, dictionaries)
    names = labels(splices)
    u, d = _index(upstream, names, "upstream"), _index(downstream, names, "downstream")
    _check_order(model, splices[u], splices[d], names[u], names[d])
    clean_t, corrupted_t = node_prompts(model, clean, corrupted)
    n_nodes = clean_t.shape[1] * (splices[d].dictionary.d_sae + 1)
    if not is_int(top) or not 1 <= int(top) <= n_nodes:
        raise ValueError(f"top: expected an int from 1 to {n_nodes} ({names[d]}'s nodes), got {top!r}")
    found = node_metric(model, metric, clean_t, corrupted_t, target, foil, corrupted is None)
    g, features, errors = node_scores(model, splices, clean_t, corrupted_t, found, 1, corrupted is None)
    chosen = _best(np.array(features[d], dtype=np.float32), np.array(errors[d], dtype=np.float32), int(top))
    run = clean_t if corrupted is None else corrupted_t
    grad_f, grad_e = _pullback(model, splices[u], splices[d], run, chosen, g.grad_features[d][0],
                               g.grad_errors[d][0])
    if corrupted is None:
        delta_f, delta_e = -g.features[u][0], -g.errors[u][0]
    else:
        delta_f, delta_e = g.features[u][-1] - g.features[u][0], g.errors[u][-1] - g.errors[u][0]
    edge_f, edge_e = (grad_f * delta_f).sum(axis=1), (grad_e * delta_e).sum(axis=(1, 3))
    mx.eval(edge_f, edge_e)
    out = FeatureEdges(names[u], names[d], token_labels(model, clean_t[0].tolist()),
                       [(t, f) for t, f, _ in chosen], np.array([s for *_, s in chosen], dtype=np.float32),
                       np.array(edge_f, dtype=np.float32), np.array(edge_e, dtype=np.float32),
                       "ablation" if corrupted is None else "patching", str(found))
    return attach(out, model, [clean] if corrupted is None else [clean, corrupted],
                  {"dictionaries": names, "upstream": names[u], "downstream": names[d], "top": int(top),
                   "metric": str(found), "target": target, "foil": foil})


def _index(which: Any, names: List[str], arg: str) -> int:
    if is_int(which) and 0 <= int(which) < len(names):
        return int(which)
    if isinstance(which, str) and which in names:
        return names.index(which)
    raise KeyError(f"{arg}={which!r}: expected an index below {len(names)} or one of the dictionaries' labels "
                   f"{names}")


def _event(model: Any, site: sites.Site) -> tuple:
    """The hook event at which ``site``'s value exists (a layer's ``resid_mid``: its MLP half's input)."""
    if site.phase == "resid_mid":
        path, phase = model._index.residual_site(site.path, "resid_mid")
        return path, 0, phase
    return site.path, 0, site.phase


def _check_order(model: Any, up: Splice, down: Splice, up_label: str, down_label: str) -> None:
    """The downstream dictionary must read its input after the upstream one writes its output."""
    events = model._probe(mx.zeros((1, sites.PROBE_TOKENS), dtype=mx.int32)).events
    wrote, reads = events.index(_event(model, up.site_out)), events.index(_event(model, down.site_in))
    if reads <= wrote:
        raise ValueError(f"downstream={down_label!r} reads {down.site_in.name!r}, which the forward reaches no later "
                         f"than upstream={up_label!r} writes {up.site_out.name!r}: the downstream dictionary must come "
                         "after the upstream one (swap them?)")


def _best(features: np.ndarray, errors: np.ndarray, k: int) -> List[Tuple[int, Union[int, str], float]]:
    """The ``k`` nodes ``(position, feature or "error", score)`` of largest absolute score, ranked as
    :class:`FeatureScores` ranks them."""
    flat = np.concatenate([features.ravel(), errors])
    width = features.shape[1]
    out: List[Tuple[int, Union[int, str], float]] = []
    for i in np.argsort(-np.abs(flat), kind="stable")[:k]:
        i = int(i)
        t, f = divmod(i, width) if i < features.size else (i - features.size, "error")
        out.append((int(t), f, float(flat[i])))
    return out


def _pullback(model: Any, up: Splice, down: Splice, run: mx.array, chosen: list, grad_f: mx.array,
              grad_e: mx.array) -> Tuple[mx.array, mx.array]:
    """``(top, rows, seq, d_sae_U)`` and ``(top, rows, seq, d_out_U)``: for each chosen downstream node, its
    gradient (``grad_f`` / ``grad_e``, ``(rows, seq, width)`` at ``D``) at that node alone, pulled back to
    ``U``'s features and error in ``run``. The nodes are row blocks of one folded batch (``run`` repeated
    ``top`` times), so one vector-Jacobian product gives them all (``mx.vmap`` would spare the repeated
    forward, but quantized matmuls have no vmap rule)."""
    top, (rows, seq) = len(chosen), run.shape
    tiled = mx.concatenate([run] * top, axis=0)
    prog, names = _program(model, up, down, tiled)
    weights = {}
    for binding, s in zip(names, (up, down)):
        weights.update({binding[w]: value for w, value in s.dictionary.inference_weights().items()})
    positions = mx.array([t for t, _, _ in chosen])
    is_error = mx.array([f == "error" for _, f, _ in chosen])
    feature = mx.array([0 if f == "error" else f for _, f, _ in chosen])
    at_t = (mx.arange(seq)[None, :] == positions[:, None])[:, None, :, None]  # (top, 1, seq, 1)
    at_f = mx.arange(down.dictionary.d_sae)[None, :] == feature[:, None]  # (top, d_sae)
    cot_f = mx.where(at_t & (at_f & ~is_error[:, None])[:, None, None, :], grad_f[None], 0.0)
    cot_e = mx.where(at_t & is_error[:, None, None, None], grad_e[None], 0.0)
    zeros = [mx.zeros(prog.params["delta_f"].shape), mx.zeros(prog.params["delta_e"].shape)]

    def parts(delta_f: mx.array, delta_e: mx.array) -> List[mx.array]:
        out = prog.fn(tiled, dict(weights, delta_f=delta_f, delta_e=delta_e))
        return [out["features"], out["error"]]

    cotangents = [c.reshape((top * rows,) + tuple(c.shape[2:])) for c in (cot_f, cot_e)]
    grads = mx.vjp(parts, zeros, cotangents)[1]
    return tuple(g.reshape((top, rows) + tuple(g.shape[1:])) for g in grads)


def _program(model: Any, up: Splice, down: Splice, run: mx.array) -> tuple:
    """The program of ``U``'s parts (plus zero params ``delta_f``, ``delta_e``) to ``D``'s parts on tokens of
    ``run``'s shape, and its weight bindings (cached on the model per structure)."""
    key = (structure(up), structure(down), tuple(run.shape))
    found = cached_program(model, KIND, key)
    if found is not None:
        return found
    specs = [splice(up.dictionary, name="up"), splice(down.dictionary, name="down")]
    shape = tuple(run.shape)
    with model.trace(run, capture="saved", dictionaries=specs, compile=False) as tr:
        parts = sites.read(model, up.site_in).up
        parts.features = parts.features + param("delta_f", mx.zeros(shape + (up.dictionary.d_sae,)))
        parts.error = parts.error + param("delta_e", mx.zeros(shape + (up.dictionary.d_out,)))
        later = sites.read(model, down.site_in).down
        later.features.save("features")
        later.error.save("error")
    prog = tr.program()
    return keep_program(model, KIND, key, (prog, weight_params(prog, specs)))
