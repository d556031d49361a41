"""Edge attribution patching (EAP) and its integrated-gradients form (EAP-IG).

The score of edge ``(u, r)`` is ``sum over rows, positions and hidden of (z_u(clean) - z_u(corrupted)) *
g_r``, where ``z_u`` is sender ``u``'s output and ``g_r`` the gradient of the metric at receiver ``r``'s
input: the first-order change of the metric when that one edge carries its clean value into the corrupted
run. **EAP** takes ``g_r`` in the corrupted run. **EAP-IG** averages it over ``steps`` points of the path
from the corrupted to the clean input embeddings, ``e(a) = (1 - a) e(corrupted) + a e(clean)`` at
``a = k / steps`` for ``k = 0 .. steps - 1`` (a left Riemann sum: ``steps=1`` is EAP).

**One forward and backward.** The points, plus the clean run (``a = 1``, whose senders give ``z(clean)``;
``a = 0`` gives ``z(corrupted)``), are ``steps + 1`` variants of one program folded into the batch axis
(``prog.batched``); ``mx.value_and_grad`` of the variants' weighted metric with respect to additive deltas at
every receiver's input gives every ``g_r`` at once (the clean variant has weight 0). The forward and backward
are one compiled function, cached on the model (traced once per shape: a compiled program differentiated
from outside would be traced again on every call). The scores' arithmetic after it runs eagerly: on this CPU,
MLX's fused kernels for it were slower than its own primitives (measured 0.54 s against 0.39 s).

**A head's q, k and v inputs.** A head's query input is a copy of the layer's input ``x`` that feeds only
that head's query: ``q_h = W_q[h] ln1(x_h) (+ b_q[h])``, then the model's own query norm and RoPE. The
gradient at that copy, at ``x_h = x``, is by the chain rule ``J_ln1(x)^T W_q[h]^T dm/dq_h``, with
``dm/dq_h`` the gradient at head ``h``'s slice of the q projection's output. So the program adds its deltas
to the q, k and v projections' outputs (where one gradient per head is exact), and each head's gradient is
taken back through its rows of the projection and through the norm's Jacobian at ``x`` (:func:`.ops.norm_vjp`);
keys and values per key-value head. Exact edge patching (:mod:`.patching`) runs such copies for real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

import mlx.core as mx
import numpy as np

from mlxterp.compiler import StateCompiled
from ..analysis.metrics import Metric
from ..analysis.programs import cached_program, keep_program
from ..tracing.program import Program
from . import ops
from .edges import EdgeScores
from .inputs import check_steps, circuit_metric, prompt_pair
from .nodes import CircuitGraph, check_granularity
from .parts import Parts, circuit_parts, find_parts
from .runs import delta_width, gradient_program, sender_stack

if TYPE_CHECKING:
    from ..model import InterpretableModel

METHODS = ("eap", "eap-ig")


def edge_attribution(model: InterpretableModel, clean: Any, corrupted: Any, metric: Any = "logit_diff",
                     method: str = "eap-ig", steps: int = 5, receivers: str = "heads", *, target: Any = None,
                     foil: Any = None) -> EdgeScores:
    """See :meth:`mlxterp.circuits.methods.CircuitsMixin.edge_attribution`."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    steps = 1 if method == "eap" else check_steps(steps)
    graph = find_parts(model).graph_for(check_granularity(receivers))
    clean_tokens, corrupted_tokens = prompt_pair(model, clean, corrupted)
    found = circuit_metric(model, metric, clean_tokens, corrupted_tokens, target, foil)
    parts = circuit_parts(model)
    alphas = mx.array([k / steps for k in range(steps)] + [1.0], dtype=mx.float32)
    weights = mx.array([1.0 / steps] * steps + [0.0], dtype=mx.float32)
    gradients = _compiled(model, parts, graph, corrupted_tokens, found, steps)
    grads, xs, diffs, values = gradients(clean_tokens, corrupted_tokens, alphas, weights)
    scores = _scores(parts, graph, grads, xs, dict(zip(_diff_keys(parts), diffs)))
    mx.eval(scores, values)
    values = np.array(values, dtype=np.float64)
    return EdgeScores(graph, np.array(scores, dtype=np.float64), method, steps, str(found), float(values[-1]),
                      float(values[0]))


def _diff_keys(parts: Parts) -> List[str]:
    """The saves whose clean - corrupted difference gives the senders' (see :func:`.runs.sender_stack`)."""
    return ["embed"] + [f"{kind}_{lp.index}" for lp in parts.layers for kind in ("heads", "mlp")]


def _compiled(model: InterpretableModel, parts: Parts, graph: CircuitGraph, tokens: mx.array, metric: Metric,
              steps: int) -> StateCompiled:
    """The compiled forward and backward for this shape, granularity, metric and number of steps (cached)."""
    key = (tuple(tokens.shape), graph.granularity, metric, steps)
    found = cached_program(model, "circuits.attribution", key)
    if found is None:
        program = gradient_program(model, parts, tokens, graph.granularity)

        def gradients(clean: mx.array, corrupted: mx.array, alphas: mx.array, weights: mx.array) -> Any:
            return _gradients(program, parts, metric, clean, corrupted, alphas, weights)

        found = keep_program(model, "circuits.attribution", key,
                             StateCompiled(gradients, model.model, model._executor.stats))
    return found


def _gradients(program: Program, parts: Parts, metric: Metric, clean: mx.array, corrupted: mx.array,
               alphas: mx.array, weights: mx.array) -> tuple:
    """The deltas' gradients at the integration points (the clean variant, of weight 0, left out), each
    layer's input there, the clean - corrupted differences of the saves the senders are made of, and the metric
    of each variant ``(steps + 1,)``."""
    k = alphas.shape[0]
    names = [f"delta_{lp.index}" for lp in parts.layers] + ["delta_logits"]
    zeros = [mx.zeros((k,) + program.params[n].shape, dtype=mx.float32) for n in names]
    source = mx.broadcast_to(clean[None], (k,) + tuple(clean.shape))

    def objective(deltas: List[mx.array]) -> tuple:
        # Every variant in this process: the backward needs them all here (no sharding over mx.distributed).
        out = program.batched(corrupted, distributed=False, alpha=alphas, source=source, **dict(zip(names, deltas)))
        logits = out["logits"]
        values = mx.stack([metric.score(logits[j]).mean() for j in range(k)])  # the metric sees (batch, vocab)
        return (values * weights).sum(), values, out

    (_, values, out), grads = mx.value_and_grad(objective)(zeros)
    xs = [out[f"x_{lp.index}"][:-1] for lp in parts.layers]
    diffs = [(out[name][-1] - out[name][0]).astype(mx.float32) for name in _diff_keys(parts)]
    return [g[:-1] for g in grads], xs, diffs, values


def _scores(parts: Parts, graph: CircuitGraph, grads: List[mx.array], xs: List[mx.array],
            diffs: Dict[str, mx.array]) -> mx.array:
    """The score matrix from the deltas' gradients at the integration points and the layers' inputs there (each
    point's gradients carry its weight already, so they are summed), and the saves' clean - corrupted
    differences (senders are linear in them: heads go through their o_proj slices once)."""
    diff = sender_stack(parts, diffs)
    rows = []
    for lp in parts.layers:
        rows += [_attn_gradients(parts, graph, lp, grads[lp.index], xs[lp.index]),
                 _summed(grads[lp.index][..., -parts.hidden:])[None]]
    received = mx.concatenate(rows, axis=0)  # (receivers - 1, batch, seq, hidden)
    scores = received.reshape(received.shape[0], -1) @ diff.reshape(diff.shape[0], -1).T
    at_logits = _summed(grads[-1])[:, -1]  # (batch, hidden)
    logits_row = (diff[:, :, -1] * at_logits[None]).sum(axis=(1, 2))
    scores = mx.concatenate([scores, logits_row[None]], axis=0)
    return mx.where(mx.array(graph.valid()), scores, mx.zeros_like(scores))


def _summed(grad: mx.array) -> mx.array:
    """``grad`` summed over its leading variant axis, in float32."""
    return grad.astype(mx.float32).sum(axis=0)


def _attn_gradients(parts: Parts, graph: CircuitGraph, lp: Any, grad: mx.array, x: mx.array) -> mx.array:
    """Gradients at layer ``lp``'s attention receivers' inputs ``(receivers, batch, seq, hidden)``, summed
    over the variants. ``grad``: ``(variants, batch, seq, width)`` at the layer's deltas; ``x``: the layer's
    input per variant."""
    k, batch, seq, _ = grad.shape
    offsets = delta_width(parts, graph.granularity)
    if graph.granularity == "layers":
        return _summed(grad[..., offsets[0]:offsets[1]])[None]
    cotangents = []
    for path, heads, (start, stop) in zip((lp.q, lp.k, lp.v), (graph.n_heads, graph.n_kv_heads, graph.n_kv_heads),
                                          zip(offsets[:3], offsets[1:4])):
        g = grad[..., start:stop].reshape(k * batch, seq, stop - start)
        cotangents.append(ops.per_head_cotangents(g, heads, linear=parts.module(path)))
    cot = mx.concatenate(cotangents, axis=0)  # (receivers, variants * batch, seq, hidden)
    back = ops.norm_vjp(x.reshape(k * batch, seq, -1), cot, norm=parts.module(lp.ln1))
    return back.reshape(back.shape[0], k, batch, seq, -1).astype(mx.float32).sum(axis=1)
