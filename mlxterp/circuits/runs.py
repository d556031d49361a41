"""The recorded run every circuit method builds on: a forward that saves each sender's output, optionally
with an additive delta at every receiver's input (the points edge attribution differentiates at) and the
embedding moved along the path of integrated gradients. Recorded once per shape as a
:class:`~mlxterp.Program` and kept on the model.

Saves (``B`` rows, ``S`` positions, or 1 with ``last_only``; ``D`` the residual width):

``embed``        ``(B, S, D)``: the embedding (after the interpolation, if any).
``heads_L``      ``(B, S, n_heads, head_dim)``: layer ``L``'s ``attn.heads`` (:func:`sender_stack` takes
                 each through its slice of the output projection).
``mlp_L``        ``(B, S, D)``: layer ``L``'s MLP output.
``senders_L``    ``(n_heads + 1, B, S, D)``: instead of the two above in the capture program (one variant):
                 layer ``L``'s heads' outputs, then its MLP's, computed inside the compiled program.
``x_L``          ``(B, S, D)``: layer ``L``'s input, where its attention receivers read (with deltas only).
``resid``        ``(B, 1, D)``: the final norm's input at the last position.
``logits``       ``(B, vocab)``: the last position's logits (the final norm's input is cut to that position).

Receiver deltas (with ``receivers="heads"``): layer ``L``'s param ``delta_L`` is ``(B, S, (n_heads + 2 *
n_kv_heads) * head_dim + D)``: the first columns add to the q, k and v projections' outputs, the last ``D``
to the MLP norm's input; ``delta_logits`` ``(B, 1, D)`` adds to the final norm's input. A head's q/k/v
receiver gradient is recovered from its projection's gradient (see :mod:`.attribution`). With
``receivers="layers"`` the first ``D`` columns add to the attention norm's input instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import mlx.core as mx

from ..analysis.programs import cached_program, keep_program
from ..tracing.program import Program, param
from ..tracing.proxy import apply
from . import ops
from .parts import LayerParts, Parts

if TYPE_CHECKING:
    from ..model import InterpretableModel


def sender_stack(parts: Parts, saves: Dict[str, mx.array]) -> mx.array:
    """Every sender's output from one run's saves, in the graph's sender order: ``(n_senders, B, S, D)``."""
    blocks = [saves["embed"][None]]
    for lp in parts.layers:
        found = saves.get(f"senders_{lp.index}")
        blocks.append(found if found is not None else ops.stack_senders(
            saves[f"heads_{lp.index}"], saves[f"mlp_{lp.index}"], o_proj=parts.module(lp.o)))
    return mx.concatenate(blocks, axis=0)


def delta_width(parts: Parts, granularity: str) -> Tuple[int, ...]:
    """Column offsets of one layer's delta: ``(q, k, v, mlp, end)`` for ``"heads"``, ``(attn, mlp, end)``
    for ``"layers"``."""
    g, dim, hidden = parts.graph, parts.head_dim, parts.hidden
    if granularity == "layers":
        return (0, hidden, 2 * hidden)
    q, kv = g.n_heads * dim, g.n_kv_heads * dim
    return (0, q, q + kv, q + 2 * kv, q + 2 * kv + hidden)


def record_run(model: InterpretableModel, parts: Parts, granularity: str = "heads", *,
               deltas: Optional[Dict[str, Any]] = None, alpha: Any = None, source: Any = None,
               last_only: bool = False, stacked: bool = False) -> None:
    """Inside a trace: record the saves of the module docstring (``deltas``: traced params by name, or None;
    ``alpha`` and ``source``: the interpolation's traced params, or None; ``stacked``: save ``senders_L``)."""
    embed = model.module(parts.embed)
    embedded = embed.output
    if alpha is not None:
        embedded = apply(parts.bind(ops.interpolate, embed=parts.embed), embedded, source, alpha)
        embed.output = embedded
    (apply(ops.take_last, embedded) if last_only else embedded).save("embed")
    for lp in parts.layers:
        if deltas is not None:
            _add_deltas(model, parts, lp, granularity, deltas[f"delta_{lp.index}"])
        heads, mlp = model.module(lp.attn).heads, model.module(lp.mlp).output
        if last_only:
            heads, mlp = apply(ops.take_last, heads), apply(ops.take_last, mlp)
        if stacked:
            apply(parts.bind(ops.stack_senders, o_proj=lp.o), heads, mlp).save(f"senders_{lp.index}")
        else:
            heads.save(f"heads_{lp.index}")
            mlp.save(f"mlp_{lp.index}")
    final = model.module(parts.final_norm)
    resid = apply(ops.take_last, final.input)
    resid.save("resid")
    final.input = resid if deltas is None else apply(ops.last_plus, final.input, deltas["delta_logits"])
    model.output[:, -1].save("logits")


def _add_deltas(model: InterpretableModel, parts: Parts, lp: LayerParts, granularity: str, delta: Any) -> None:
    """Add layer ``lp``'s receiver deltas (see the module docstring) and save its input ``x_L``."""
    offsets = delta_width(parts, granularity)
    model.module(lp.path).input.save(f"x_{lp.index}")
    if granularity == "layers":
        ln1 = model.module(lp.ln1)
        ln1.input = apply(ops.add_slice, ln1.input, delta, offsets[0], offsets[1])
    else:
        for path, (start, stop) in zip((lp.q, lp.k, lp.v), zip(offsets[:3], offsets[1:4])):
            proj = model.module(path)
            proj.output = apply(ops.add_slice, proj.output, delta, start, stop)
    ln2 = model.module(lp.ln2)
    ln2.input = apply(ops.add_slice, ln2.input, delta, offsets[-2], offsets[-1])


def capture_program(model: InterpretableModel, parts: Parts, tokens: mx.array, last_only: bool) -> Program:
    """The program that saves every sender's output (no deltas), cached per shape and ``last_only``."""
    key = ("capture", tuple(tokens.shape), last_only)
    program = cached_program(model, "circuits", key)
    if program is None:
        with model.trace(tokens, capture="saved", compile=False) as tr:
            record_run(model, parts, last_only=last_only, stacked=True)
        program = keep_program(model, "circuits", key, tr.program())
    return program


def gradient_program(model: InterpretableModel, parts: Parts, tokens: mx.array, granularity: str) -> Program:
    """The program with receiver deltas and the interpolated embedding, recorded on ``tokens`` (the corrupted
    rows; its ``source`` param takes the clean ones), cached per shape and granularity."""
    key = ("gradient", tuple(tokens.shape), granularity)
    program = cached_program(model, "circuits", key)
    if program is None:
        batch, seq = tokens.shape
        width = delta_width(parts, granularity)[-1]
        with model.trace(tokens, capture="saved", compile=False) as tr:
            deltas = {f"delta_{lp.index}": param(f"delta_{lp.index}", mx.zeros((batch, seq, width)))
                      for lp in parts.layers}
            deltas["delta_logits"] = param("delta_logits", mx.zeros((batch, 1, parts.hidden)))
            record_run(model, parts, granularity, deltas=deltas, alpha=param("alpha", 0.0),
                       source=param("source", tokens))
        program = keep_program(model, "circuits", key, tr.program())
    return program
