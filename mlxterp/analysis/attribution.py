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
``mx.compile``-d function of the token ids, cached on the model per (components, sequence length, metric):
both runs are one :class:`~mlxterp.Program` (the deltas are its named params), called through its pure
``fn`` inside ``mx.value_and_grad``, so a repeated call records nothing.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import mlx.core as mx
import numpy as np

from mlxterp.compiler import StateCompiled
from ..core import WrappedModel
from ..tracing.program import Program, param
from ..tracing.proxy import apply
from .components import ComponentSite
from .metrics import distance, identical_logits_message
from .programs import cached_program, keep_program
from .sweep import last_position


def _record(model: WrappedModel, sites: Dict[int, ComponentSite], norm_path: Optional[str], deltas: Dict[str, Any]) -> None:
    """Inside a trace: save each component's output before its delta (``act_k``), add the delta
    (``delta_k``), and save the last position's logits (``logits``), the final norm cut to it."""
    for k, site in enumerate(sites.values()):
        component = model.module(site.path)
        out = component.output
        out.save(f"act_{k}")
        component.output = out + deltas[f"delta_{k}"]
    if norm_path is not None:
        norm = model.module(norm_path)
        norm.input = apply(last_position, norm.input)
    model.output[:, -1, :].save("logits")


def _grid(program: Program, tokens: mx.array, metric: Any) -> Tuple[mx.array, mx.array]:
    """``(layers, seq)`` sums ``<delta, grad>`` per cell and ``d(corrupted, clean)`` (lazy arrays) for
    ``tokens`` = (clean row, corrupted row)."""
    names = [name for name in program.params if name.startswith("delta_")]  # an edited model's edits add params
    clean = program.fn(tokens[0:1])
    clean_logits = mx.stop_gradient(clean["logits"])

    def objective(deltas: List[mx.array]) -> Tuple[mx.array, List[mx.array]]:
        out = program.fn(tokens[1:2], dict(zip(names, deltas)))
        return distance(out["logits"], clean_logits, metric)[0], [out[f"act_{k}"] for k in range(len(names))]

    zeros = [mx.zeros(program.params[name].shape, program.params[name].dtype) for name in names]
    (d0, corrupted_acts), grads = mx.value_and_grad(objective)(zeros)
    rows = []
    for k, (corrupted, grad) in enumerate(zip(corrupted_acts, grads)):
        prod = (clean[f"act_{k}"].astype(mx.float32) - corrupted.astype(mx.float32)) * grad.astype(mx.float32)
        rows.append(prod.reshape(prod.shape[0], prod.shape[1], -1).sum(axis=-1)[0])
    return mx.stack(rows), d0


def _compiled_grid(model: WrappedModel, tokens: mx.array, sites: Dict[int, ComponentSite], metric: Any,
                   norm_path: Optional[str]) -> StateCompiled:
    """The cached compiled grid function for this key (its program recorded on the corrupted row once)."""
    key = (tuple((s.layer, s.path) for s in sites.values()), int(tokens.shape[1]), metric, norm_path)
    compiled = cached_program(model, "attribution", key)
    if compiled is None:
        deltas = {f"delta_{k}": mx.zeros((1,) + s.shape[1:], s.dtype) for k, s in enumerate(sites.values())}
        with model.trace(tokens[1:2], capture="saved") as tr:
            _record(model, sites, norm_path, {name: param(name, v) for name, v in deltas.items()})
        program = tr.program()
        compiled = keep_program(model, "attribution", key,
                                StateCompiled(lambda t: _grid(program, t, metric), model.model,
                                              model._executor.stats))
    return compiled


def attribution_grid(model: WrappedModel, tokens: mx.array, sites: Dict[int, ComponentSite], positions: List[int],
                     metric: Any, norm_path: Optional[str]) -> Tuple[np.ndarray, float]:
    """Linear recovery estimate, ``(layers, positions)`` in percent, and ``d(corrupted, clean)``.

    Args:
        model: the InterpretableModel.
        tokens: ``(2, seq)``: clean prompt in row 0, corrupted in row 1.
        sites: component site per layer (ordered by layer).
        positions: positions (columns of the grid).
        metric: a :class:`~.metrics.Metric` or distance name.
        norm_path: final norm whose input is cut to the last position (or None).

    Raises:
        ValueError: if the clean and corrupted logits coincide (recovery undefined).
    """
    grid, d0 = _compiled_grid(model, tokens, sites, metric, norm_path)(tokens)
    mx.eval(grid, d0)
    d_corrupted = float(d0.item())
    if d_corrupted == 0.0:
        raise ValueError(identical_logits_message(metric))
    return np.array(grid, dtype=np.float64)[:, positions] * (-100.0 / d_corrupted), d_corrupted
