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
import mlx.nn as nn
import numpy as np

from compiler import StateCompiled

from ..tracing.proxy import apply
from .components import ComponentSite
from .metrics import distance, identical_logits_message
from .sweep import last_position, saved_value

MAX_PROGRAMS = 16  # compiled attribution programs kept per model (least recently used dropped)


def replace_with(_: mx.array, value: mx.array) -> mx.array:
    """The replacement written over a module output (module-level so the graph structure is stable)."""
    return value


def _traced_run(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], norm_path: Optional[str],
                deltas: Optional[List[mx.array]] = None, embed: Optional[Tuple[str, mx.array]] = None,
                ) -> Tuple[List[mx.array], mx.array]:
    """One eager trace: component outputs (before any delta) per layer, and last-position logits.

    ``embed = (path, value)`` replaces the token embedding's output with ``value`` (``tokens`` are then
    placeholders that only give the shape).
    """
    with model.trace(tokens, compile=False, capture="saved"):
        if embed is not None:
            module = model.module(embed[0])
            module.output = apply(replace_with, module.output, embed[1])
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
    program = _program(model, tokens, sites, metric, norm_path)
    if program is None:
        grid, d0 = _grid(model, tokens[0:1], tokens[1:2], sites, metric, norm_path)
    else:
        grid, d0 = program(tokens)
    mx.eval(grid, d0)
    d_corrupted = float(d0.item())
    if d_corrupted == 0.0:
        raise ValueError(identical_logits_message(metric))
    return np.array(grid, dtype=np.float64)[:, positions] * (-100.0 / d_corrupted), d_corrupted


# -- the compiled program ------------------------------------------------------------------------------------
class _Program:
    """``tokens (2, seq) -> (grid sums, d0)`` compiled once for one (components, seq, metric, norm) key."""

    def __init__(self, model: Any, seq: int, sites: Dict[int, ComponentSite], metric: str,
                 norm_path: Optional[str], embed_path: str):
        self.model, self.embed_path = model, embed_path
        self.embedding: nn.Module = model._index.modules[embed_path]
        placeholder = mx.zeros((1, seq), dtype=mx.int32)  # ids in range for any vocabulary, never read
        mx.eval(placeholder)
        raw = model.model

        def run(embeddings: mx.array) -> Tuple[mx.array, mx.array]:
            return _grid(model, placeholder, placeholder, sites, metric, norm_path, (embed_path, embeddings))

        # The model's weights are implicit inputs (weight edits are seen), as in the executor's compiled traces.
        self.compiled = StateCompiled(run, raw)

    def __call__(self, tokens: mx.array) -> Tuple[mx.array, mx.array]:
        return self.compiled(self.embedding(tokens))


def _program(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], metric: str,
             norm_path: Optional[str]) -> Optional[_Program]:
    """The cached compiled program for this call, or ``None`` when the token embedding is not identifiable."""
    seq = int(tokens.shape[1])
    key = (tuple((s.layer, s.path) for s in sites.values()), seq, metric, norm_path)
    programs = model._program_cache("attribution")
    if key in programs:
        programs.move_to_end(key)
        return programs[key]
    embed_path = _token_embedding(model, seq)
    program = None if embed_path is None else _Program(model, seq, sites, metric, norm_path, embed_path)
    programs[key] = program
    while len(programs) > MAX_PROGRAMS:
        programs.popitem(last=False)
    return program


def _token_embedding(model: Any, seq: int) -> Optional[str]:
    """Path of the token embedding if it is unambiguous and called once per forward, ``(1, seq)`` ids in and
    ``(1, seq, hidden)`` out; else ``None``."""
    path = model._index.token_embedding()
    if path is None:
        return None
    probe = model._probe(mx.zeros((1, seq), dtype=mx.int32))
    if probe.call_counts().get(path) != 1:
        return None
    spec_in, spec_out = probe.values.get((path, 0, "input")), probe.values.get((path, 0, "output"))
    ok = (isinstance(spec_in, tuple) and tuple(spec_in[0]) == (1, seq)
          and isinstance(spec_out, tuple) and len(spec_out[0]) == 3 and tuple(spec_out[0][:2]) == (1, seq))
    return path if ok else None
