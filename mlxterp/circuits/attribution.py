"""Edge attribution patching (EAP) and its integrated-gradients forms (EAP-IG on the inputs or on the
activations).

The score of edge ``(u, r)`` is ``sum over rows, positions and hidden of (z_u(clean) - z_u(corrupted)) *
g_r``, where ``z_u`` is sender ``u``'s output and ``g_r`` the gradient of the metric at receiver ``r``'s
input: the first-order change of the metric when that one edge carries its clean value into the corrupted
run. **EAP** takes ``g_r`` in the corrupted run. **EAP-IG** (Hanna et al. 2024) averages it over ``steps``
points of the path from the corrupted to the clean input embeddings, ``e(a) = (1 - a) e(corrupted) + a
e(clean)`` at ``a = k / steps`` for ``k = 0 .. steps - 1`` (a left Riemann sum: ``steps=1`` is EAP).
**EAP-IG on the activations** (``"eap-ig-activations"``; the node integrated gradients of Marks et al. 2024,
applied to edges) averages ``g_r`` for sender ``u``'s edges over the path on which only ``u``'s block of
senders (the embedding, a layer's heads, or a layer's MLP: senders that run side by side) moves from its
corrupted to its clean outputs in the corrupted run, ``z_b(a) = z_b(corrupted) + a (z_b(clean) -
z_b(corrupted))``, at the same points. A sender's node score (the sum of its edges) then tends, as ``steps``
grows, to the integrated-gradients share of that block's exact patching effect; on the input path it mixes
the gradients of runs that are partly clean everywhere, which single-node patching never visits (see
README.md, "Circuits").

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

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import mlx.core as mx
import numpy as np

from mlxterp.compiler import StateCompiled
from ..analysis.metrics import Metric
from ..analysis.programs import cached_program, keep_program
from ..tracing.program import Program
from ..views.saving import attach
from . import ops
from .edges import EdgeScores
from .inputs import check_steps, circuit_metric, prompt_pair
from .nodes import CircuitGraph, check_granularity
from .parts import Parts, circuit_parts, find_parts
from .runs import capture_program, delta_width, gradient_program, sender_blocks, sender_stack

if TYPE_CHECKING:
    from ..model import InterpretableModel

METHODS = ("eap", "eap-ig", "eap-ig-activations")
CHUNK = 8  # activation-path variants per compiled forward and backward (bounds memory; one shape compiles)


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
    if method == "eap-ig-activations" and steps > 1:
        scores, clean_value, corrupted_value = _activation_scores(model, parts, graph, clean_tokens,
                                                                  corrupted_tokens, found, steps)
    else:  # EAP-IG on the activations with one step is EAP too
        scores, clean_value, corrupted_value = _input_scores(model, parts, graph, clean_tokens, corrupted_tokens,
                                                             found, steps)
    out = EdgeScores(graph, scores, method, steps, str(found), clean_value, corrupted_value)
    return attach(out, model, [clean, corrupted], {"metric": str(found), "method": method, "steps": steps,
                                                   "receivers": receivers, "target": target, "foil": foil})


def _input_scores(model: InterpretableModel, parts: Parts, graph: CircuitGraph, clean: mx.array,
                  corrupted: mx.array, metric: Metric, steps: int) -> tuple:
    """EAP-IG on the input path (EAP for one step): the scores ``(receivers, senders)`` and the clean and
    corrupted metric, from one folded forward and backward of ``steps + 1`` variants."""
    alphas = mx.array([k / steps for k in range(steps)] + [1.0], dtype=mx.float32)
    weights = mx.array([1.0 / steps] * steps + [0.0], dtype=mx.float32)
    gradients = _compiled(model, parts, graph, corrupted, metric, steps, "inputs")
    grads, xs, diffs, values = gradients(clean, corrupted, alphas, weights)
    received, at_logits = _received(parts, graph, grads, xs)
    diff = sender_stack(parts, dict(zip(_diff_keys(parts), diffs)))
    scores = _contract(received.sum(axis=1), at_logits.sum(axis=0), diff)
    scores = mx.where(mx.array(graph.valid()), scores, mx.zeros_like(scores))
    mx.eval(scores, values)
    values = np.array(values, dtype=np.float64)
    return np.array(scores, dtype=np.float64), float(values[-1]), float(values[0])


def _activation_scores(model: InterpretableModel, parts: Parts, graph: CircuitGraph, clean: mx.array,
                       corrupted: mx.array, metric: Metric, steps: int) -> tuple:
    """EAP-IG on the activation path: the corrupted run (the path's first point, shared by every block) and
    ``steps - 1`` points per block of senders, run ``CHUNK`` variants per compiled forward and backward; each
    variant's receiver gradients are dotted with its own block's senders' differences only."""
    saves = capture_program(model, parts, clean, last_only=False, stacked=False)()
    clean_values = [saves["embed"]] + [saves[f"{kind}_{lp.index}"] for lp in parts.layers for kind in ("heads", "mlp")]
    blocks = sender_blocks(parts)
    points = [(None, 0.0)] + [(b, k / steps) for b in range(blocks) for k in range(1, steps)]
    gradients = _compiled(model, parts, graph, corrupted, metric, CHUNK, "activations")
    columns = _block_columns(graph)
    scores, diff, values = None, None, []
    for start in range(0, len(points), CHUNK):
        chunk = points[start:start + CHUNK]
        mix = np.zeros((CHUNK, blocks), dtype=np.float32)  # a short last chunk: corrupted runs, never read
        for j, (b, a) in enumerate(chunk):
            if b is not None:
                mix[j, b] = a
        grads, xs, outs, chunk_values = gradients(corrupted, mx.array(mix), clean_values)
        if diff is None:  # the first variant is the corrupted run: the differences' other end
            diff = sender_stack(parts, {key: (c - o).astype(mx.float32)
                                        for key, c, o in zip(_diff_keys(parts), clean_values, outs)})
            scores = mx.zeros((graph.n_receivers, graph.n_senders), dtype=mx.float32)
        # A block's senders reach only the receivers of its layer and later ones: skip the layers before.
        first = min(0 if b is None else max(0, (b - 1) // 2) for b, _ in chunk)
        received, at_logits = _received(parts, graph, grads, xs, first)
        top = graph.layer_receivers(first)[0].start
        for j, (b, _) in enumerate(chunk):
            cols = slice(0, graph.n_senders) if b is None else columns[b]
            part = _contract(received[:, j], at_logits[j], diff[cols])
            scores = _add_block(scores, part, top, cols)
        mx.eval(scores)
        values.append(chunk_values[:len(chunk)])
    scores = mx.where(mx.array(graph.valid()), scores / steps, mx.zeros_like(scores))
    clean_value = metric.score(saves["logits"]).mean()
    mx.eval(scores, clean_value)
    return np.array(scores, dtype=np.float64), float(clean_value.item()), float(values[0][0].item())


def _block_columns(graph: CircuitGraph) -> List[slice]:
    """The sender columns of each block (the embedding, then per layer its heads and its MLP)."""
    out = [slice(0, 1)]
    for layer in range(graph.n_layers):
        senders = graph.layer_senders(layer)
        out += [slice(senders.start, senders.stop - 1), slice(senders.stop - 1, senders.stop)]
    return out


def _add_block(scores: mx.array, part: mx.array, top: int, cols: slice) -> mx.array:
    """``scores`` with ``part`` added to its rows from ``top`` on and its columns ``cols``."""
    block = mx.concatenate([scores[top:, :cols.start], scores[top:, cols] + part, scores[top:, cols.stop:]], axis=1)
    return mx.concatenate([scores[:top], block], axis=0)


def _diff_keys(parts: Parts) -> List[str]:
    """The saves whose clean - corrupted difference gives the senders' (see :func:`.runs.sender_stack`)."""
    return ["embed"] + [f"{kind}_{lp.index}" for lp in parts.layers for kind in ("heads", "mlp")]


def _compiled(model: InterpretableModel, parts: Parts, graph: CircuitGraph, tokens: mx.array, metric: Metric,
              variants: int, path: str) -> StateCompiled:
    """The compiled forward and backward for this shape, granularity, metric, path and number of variants
    (``steps`` on the input path, the chunk on the activation path), cached on the model."""
    key = (tuple(tokens.shape), graph.granularity, metric, variants, path)
    found = cached_program(model, "circuits.attribution", key)
    if found is None:
        program = gradient_program(model, parts, tokens, graph.granularity, path)
        if path == "inputs":
            def gradients(clean: mx.array, corrupted: mx.array, alphas: mx.array, weights: mx.array) -> Any:
                return _gradients(program, parts, metric, clean, corrupted, alphas, weights)
        else:
            def gradients(corrupted: mx.array, mix: mx.array, clean: List[mx.array]) -> Any:
                return _activation_gradients(program, parts, metric, corrupted, mix, clean)

        found = keep_program(model, "circuits.attribution", key,
                             StateCompiled(gradients, model.model, model._executor.stats))
    return found


def _delta_names(parts: Parts) -> List[str]:
    return [f"delta_{lp.index}" for lp in parts.layers] + ["delta_logits"]


def _differentiate(program: Program, parts: Parts, metric: Metric, corrupted: mx.array, k: int,
                   weights: Optional[mx.array], values: Dict[str, mx.array]) -> tuple:
    """``k`` folded variants of ``program`` on ``corrupted`` with ``values`` (each with a leading ``k`` axis),
    differentiated at zero receiver deltas: the deltas' gradients of the metric (weighted per variant, or each
    variant's own), the metric of each variant ``(k,)`` and the saves."""
    names = _delta_names(parts)
    zeros = [mx.zeros((k,) + program.params[n].shape, dtype=mx.float32) for n in names]

    def objective(deltas: List[mx.array]) -> tuple:
        # Every variant in this process: the backward needs them all here (no sharding over mx.distributed).
        out = program.batched(corrupted, distributed=False, **values, **dict(zip(names, deltas)))
        logits = out["logits"]
        scores = mx.stack([metric.score(logits[j]).mean() for j in range(k)])  # the metric sees (batch, vocab)
        return (scores if weights is None else scores * weights).sum(), scores, out

    (_, scores, out), grads = mx.value_and_grad(objective)(zeros)
    return grads, scores, out


def _gradients(program: Program, parts: Parts, metric: Metric, clean: mx.array, corrupted: mx.array,
               alphas: mx.array, weights: mx.array) -> tuple:
    """The deltas' gradients at the integration points (the clean variant, of weight 0, left out), each
    layer's input there, the clean - corrupted differences of the saves the senders are made of, and the metric
    of each variant ``(steps + 1,)``."""
    k = alphas.shape[0]
    source = mx.broadcast_to(clean[None], (k,) + tuple(clean.shape))
    grads, values, out = _differentiate(program, parts, metric, corrupted, k, weights,
                                        {"alpha": alphas, "source": source})
    xs = [out[f"x_{lp.index}"][:-1] for lp in parts.layers]
    diffs = [(out[name][-1] - out[name][0]).astype(mx.float32) for name in _diff_keys(parts)]
    return [g[:-1] for g in grads], xs, diffs, values


def _activation_gradients(program: Program, parts: Parts, metric: Metric, corrupted: mx.array, mix: mx.array,
                          clean: List[mx.array]) -> tuple:
    """Each variant's own deltas' gradients (variant ``j`` moves its blocks ``mix[j]`` of the way to
    ``clean``), each layer's input per variant, the first variant's sender saves (the corrupted run's, when it
    moves nothing) and the metric of each variant."""
    k = mix.shape[0]
    names = ["clean_embed"] + [f"clean_{kind}_{lp.index}" for lp in parts.layers for kind in ("heads", "mlp")]
    values = {name: mx.broadcast_to(v[None], (k,) + tuple(v.shape)) for name, v in zip(names, clean)}
    grads, scores, out = _differentiate(program, parts, metric, corrupted, k, None, dict(values, mix=mix))
    # Copies: returned as they are, the layers' inputs make MLX 0.32's compile of this function fail with
    # "IndexError: _Map_base::at" when the receivers are whole layers (their deltas add to the same input).
    xs = [mx.array(out[f"x_{lp.index}"]) for lp in parts.layers]
    return grads, xs, [out[name][0] for name in _diff_keys(parts)], scores


def _received(parts: Parts, graph: CircuitGraph, grads: List[mx.array], xs: List[mx.array], first: int = 0) -> tuple:
    """Every receiver's gradient per variant from the deltas' gradients and the layers' inputs: the receivers
    before the logits from layer ``first`` on ``(receivers, variants, batch, seq, hidden)`` and the logits'
    ``(variants, batch, hidden)`` (last position), in float32."""
    rows = []
    for lp in parts.layers[first:]:
        rows += [_attn_gradients(parts, graph, lp, grads[lp.index], xs[lp.index]),
                 grads[lp.index][..., -parts.hidden:].astype(mx.float32)[None]]
    return mx.concatenate(rows, axis=0), grads[-1][:, :, -1].astype(mx.float32)


def _contract(received: mx.array, at_logits: mx.array, diff: mx.array) -> mx.array:
    """Scores ``(receivers, senders)`` of gradients ``received`` ``(receivers - 1, batch, seq, hidden)`` and
    ``at_logits`` ``(batch, hidden)`` against the senders' differences ``diff`` ``(senders, batch, seq,
    hidden)`` (senders are linear in the saves: heads go through their o_proj slices once)."""
    scores = received.reshape(received.shape[0], -1) @ diff.reshape(diff.shape[0], -1).T
    logits_row = (diff[:, :, -1] * at_logits[None]).sum(axis=(1, 2))
    return mx.concatenate([scores, logits_row[None]], axis=0)


def _attn_gradients(parts: Parts, graph: CircuitGraph, lp: Any, grad: mx.array, x: mx.array) -> mx.array:
    """Gradients at layer ``lp``'s attention receivers' inputs ``(receivers, variants, batch, seq, hidden)``,
    in float32. ``grad``: ``(variants, batch, seq, width)`` at the layer's deltas; ``x``: the layer's input
    per variant."""
    k, batch, seq, _ = grad.shape
    offsets = delta_width(parts, graph.granularity)
    if graph.granularity == "layers":
        return grad[..., offsets[0]:offsets[1]].astype(mx.float32)[None]
    cotangents = []
    for path, heads, (start, stop) in zip((lp.q, lp.k, lp.v), (graph.n_heads, graph.n_kv_heads, graph.n_kv_heads),
                                          zip(offsets[:3], offsets[1:4])):
        g = grad[..., start:stop].reshape(k * batch, seq, stop - start)
        cotangents.append(ops.per_head_cotangents(g, heads, linear=parts.module(path)))
    cot = mx.concatenate(cotangents, axis=0)  # (receivers, variants * batch, seq, hidden)
    back = ops.norm_vjp(x.reshape(k * batch, seq, -1), cot, norm=parts.module(lp.ln1))
    return back.reshape(back.shape[0], k, batch, seq, -1).astype(mx.float32)
