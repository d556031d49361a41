"""Attribution patching: the first-order (linear) estimate of the layer x position patching grid.

Patching cell ``(i, p)`` moves the component's activation ``a`` at layer ``i``, position ``p`` from its
corrupted value to the clean one, ``delta = a_clean - a_corrupted``, and measures recovery
``R = (d(corrupted) - d(patched)) / d(corrupted) * 100`` with ``d`` the distance of the last position's
logits from the clean ones. To first order ``d(patched) ~ d(corrupted) + <grad_a d, delta>``, so

    R(i, p) ~ -100 / d(corrupted) * sum_h delta[i, p, h] * grad_a d[i, p, h]

which needs one clean forward (clean activations and logits, from the same trace) and one corrupted
forward + backward (``mx.value_and_grad`` through the traced graph, differentiating w.r.t. additive
deltas on every requested component only; the deltas are graph parameters). Both runs cut the final
norm's input to the last position (the metric reads only the last position's logits).

The whole computation (clean forward, corrupted forward and backward, the grid's products) is one
``mx.compile``-d program, cached on the model per (components, sequence length, metric): a repeated call
runs no Python tracing at all. MLX cannot compile a trace over the token ids themselves (the trace checks
their range, which evaluates them), so the compiled program takes the *token embedding's output* as its
input: it traces on placeholder ids and replaces the embedding's output with the real one (computed by
the embedding module outside). Models whose token embedding cannot be identified (one embedding module,
called once, mapping ``(batch, seq)`` ids to ``(batch, seq, hidden)``) run the same computation eagerly.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..tracing.proxy import apply
from .components import ComponentSite
from .metrics import distance, identical_logits_message
from .programs import cached_program, use_embeddings
from .sweep import last_position, saved_value


def _traced_run(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], norm_path: Optional[str],
                deltas: Optional[List[mx.array]] = None, embed: Optional[Tuple[str, mx.array]] = None,
                ) -> Tuple[List[mx.array], mx.array]:
    """One eager trace: component outputs (before any delta) per layer, and last-position logits.

    ``embed = (path, value)`` replaces the token embedding's output with ``value`` (``tokens`` are then
    placeholders that only give the shape).
    """
    with model.trace(tokens, compile=False, capture="saved"):
        use_embeddings(model, embed)
        handles = []
        for k, site in enumerate(sites.values()):
            component = model.module(site.path)
            out = component.output
            handles.append(out.save())
            if deltas is not None:
                component.output = out + deltas[k]
        if norm_path is not None:
            norm = model.module(norm_path)
            norm.input = apply(last_position, norm.input)
        logits = model.output[:, -1, :].save()
    return [saved_value(h) for h in handles], saved_value(logits)


def _grid(model: Any, clean_tokens: mx.array, corrupted_tokens: mx.array, sites: Dict[int, ComponentSite],
          metric: str, norm_path: Optional[str], embed: Optional[Tuple[str, mx.array]] = None,
          ) -> Tuple[mx.array, mx.array]:
    """``(layers, seq)`` sums ``<delta, grad>`` per cell and ``d(corrupted, clean)`` (lazy arrays).

    With ``embed = (path, (2, seq, hidden) embeddings)`` (clean row, corrupted row) the embeddings are used
    and the token arrays only give the shape (see the module docstring).
    """
    clean_embed = None if embed is None else (embed[0], embed[1][0:1])
    corrupted_embed = None if embed is None else (embed[0], embed[1][1:2])
    clean_acts, clean_logits = _traced_run(model, clean_tokens, sites, norm_path, embed=clean_embed)
    clean_logits = mx.stop_gradient(clean_logits)

    def objective(deltas: List[mx.array]) -> Tuple[mx.array, List[mx.array]]:
        acts, logits = _traced_run(model, corrupted_tokens, sites, norm_path, deltas, embed=corrupted_embed)
        return distance(logits, clean_logits, metric)[0], acts

    zeros = [mx.zeros((1,) + s.shape[1:], s.dtype) for s in sites.values()]
    (d0, corrupted_acts), grads = mx.value_and_grad(objective)(zeros)
    rows = []
    for clean, corrupted, grad in zip(clean_acts, corrupted_acts, grads):
        prod = (clean.astype(mx.float32) - corrupted.astype(mx.float32)) * grad.astype(mx.float32)
        rows.append(prod.reshape(prod.shape[0], prod.shape[1], -1).sum(axis=-1)[0])
    return mx.stack(rows), d0


def attribution_grid(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], positions: List[int],
                     metric: str, norm_path: Optional[str]) -> Tuple[np.ndarray, float]:
    """Linear recovery estimate, ``(layers, positions)`` in percent, and ``d(corrupted, clean)``.

    Args:
        model: the InterpretableModel.
        tokens: ``(2, seq)``: clean prompt in row 0, corrupted in row 1.
        sites: component site per layer (ordered by layer).
        positions: positions (columns of the grid).
        metric: distance name.
        norm_path: final norm whose input is cut to the last position (or None).

    Raises:
        ValueError: if the clean and corrupted logits coincide (recovery undefined).
    """
    key = (tuple((s.layer, s.path) for s in sites.values()), int(tokens.shape[1]), metric, norm_path)
    program = cached_program(model, "attribution", key, (1, int(tokens.shape[1])),
                             lambda ids, embed: _grid(model, ids, ids, sites, metric, norm_path, embed))
    if program is None:
        grid, d0 = _grid(model, tokens[0:1], tokens[1:2], sites, metric, norm_path)
    else:
        grid, d0 = program(tokens)
    mx.eval(grid, d0)
    d_corrupted = float(d0.item())
    if d_corrupted == 0.0:
        raise ValueError(identical_logits_message(metric))
    return np.array(grid, dtype=np.float64)[:, positions] * (-100.0 / d_corrupted), d_corrupted
