"""Attribution patching: the first-order (linear) estimate of the layer x position patching grid.

Patching cell ``(i, p)`` moves the component's activation ``a`` at layer ``i``, position ``p`` from its
corrupted value to the clean one, ``delta = a_clean - a_corrupted``, and measures recovery
``R = (d(corrupted) - d(patched)) / d(corrupted) * 100`` with ``d`` the distance of the last position's
logits from the clean ones. To first order ``d(patched) ~ d(corrupted) + <grad_a d, delta>``, so

    R(i, p) ~ -100 / d(corrupted) * sum_h delta[i, p, h] * grad_a d[i, p, h]

which needs one clean forward (clean activations and logits) and one corrupted forward + backward
(``mx.value_and_grad`` through the traced graph, differentiating w.r.t. additive deltas on every
requested component; the deltas are graph parameters).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..tracing.proxy import apply
from .components import ComponentSite
from .metrics import distance, identical_logits_message
from .sweep import last_position, saved_value


def _traced_run(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], norm_path: Optional[str],
                deltas: Optional[List[mx.array]] = None) -> Tuple[List[mx.array], mx.array]:
    """One trace: component outputs (before any delta) per layer, and last-position logits.

    The clean run is compiled (cached for repeated calls). The differentiated run is eager: under
    ``mx.value_and_grad`` MLX re-traces a compiled function on every call anyway, so compiling it
    only adds tracing work (measured: same speed, one extra trace per call).
    """
    with model.trace(tokens, compile=deltas is None, capture="saved"):
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
    clean_acts, clean_logits = _traced_run(model, tokens[0:1], sites, norm_path)
    clean_logits = mx.stop_gradient(clean_logits)

    def objective(deltas: List[mx.array]) -> Tuple[mx.array, List[mx.array]]:
        acts, logits = _traced_run(model, tokens[1:2], sites, norm_path, deltas)
        return distance(logits, clean_logits, metric)[0], acts

    zeros = [mx.zeros((1,) + s.shape[1:], s.dtype) for s in sites.values()]
    (d0, corrupted_acts), grads = mx.value_and_grad(objective)(zeros)
    cols = mx.array(positions)
    rows = []
    for clean, corrupted, grad in zip(clean_acts, corrupted_acts, grads):
        prod = (clean.astype(mx.float32) - corrupted.astype(mx.float32)) * grad.astype(mx.float32)
        rows.append(prod.reshape(prod.shape[0], prod.shape[1], -1).sum(axis=-1)[0][cols])
    grid = mx.stack(rows)
    mx.eval(grid, d0)
    d_corrupted = float(d0.item())
    if d_corrupted == 0.0:
        raise ValueError(identical_logits_message(metric))
    return np.array(grid, dtype=np.float64) * (-100.0 / d_corrupted), d_corrupted
