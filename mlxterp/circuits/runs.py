"""The recorded run every circuit method builds on: a forward that saves each sender's output, optionally
with an additive delta at every receiver's input (the points edge attribution differentiates at) and a path
of integrated gradients: the embedding moved towards another prompt's (``path="inputs"``), or each block of
senders' outputs moved towards given values (``path="activations"``). Recorded once per shape as a
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

Paths of integrated gradients: ``path="inputs"`` has params ``alpha`` (a scalar) and ``source`` (token ids like
the run's): the embedding becomes ``(1 - alpha) e + alpha e(source)``. ``path="activations"`` has params
``mix`` ``(1 + 2 L,)`` and ``clean_embed``, ``clean_heads_L``, ``clean_mlp_L`` (shaped like the saves above):
sender block ``b`` (0 the embedding, ``1 + 2 L`` layer ``L``'s heads, ``2 + 2 L`` its MLP, as
:func:`sender_blocks` numbers them) becomes ``z + mix[b] (clean_b - z)`` before anything reads it.
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


def sender_blocks(parts: Parts) -> int:
    """Blocks of senders that run side by side: the embedding, then per layer its heads and its MLP."""
    return 1 + 2 * len(parts.layers)


def record_run(model: InterpretableModel, parts: Parts, granularity: str = "heads", *,
               deltas: Optional[Dict[str, Any]] = None, alpha: Any = None, source: Any = None,
               mix: Any = None, clean: Optional[Dict[str, Any]] = None, last_only: bool = False,
               stacked: bool = False) -> None:
    """Inside a trace: record the saves of the module docstring (``deltas``: traced params by name, or None;
    ``alpha`` and ``source``: the input path's traced params, or None; ``mix`` and ``clean``: the activation
    path's, or None; ``stacked``: save ``senders_L``)."""
    embed = model.module(parts.embed)
    embedded = embed.output
    if alpha is not None:
        embedded = apply(parts.bind(ops.interpolate, embed=parts.embed), embedded, source, alpha)
        embed.output = embedded
    if mix is not None:
        embedded = embed.output = apply(ops.mix_in, embedded, clean["clean_embed"], mix, 0)
    (apply(ops.take_last, embedded) if last_only else embedded).save("embed")
    for lp in parts.layers:
        if deltas is not None:
            _add_deltas(model, parts, lp, granularity, deltas[f"delta_{lp.index}"])
        attn, mlp_module = model.module(lp.attn), model.module(lp.mlp)
        if mix is not None:
            attn.heads = apply(ops.mix_in, attn.heads, clean[f"clean_heads_{lp.index}"], mix, 1 + 2 * lp.index)
            mlp_module.output = apply(ops.mix_in, mlp_module.output, clean[f"clean_mlp_{lp.index}"], mix,
                                      2 + 2 * lp.index)
        heads, mlp = attn.heads, mlp_module.output
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


def capture_program(model: InterpretableModel, parts: Parts, tokens: mx.array, last_only: bool,
                    stacked: bool = True) -> Program:
    """The program that saves every sender's output (no deltas), cached per shape, ``last_only`` and
    ``stacked`` (``senders_L``, or ``heads_L`` and ``mlp_L`` as the activation path's ``clean_*`` params take
    them)."""
    key = ("capture", tuple(tokens.shape), last_only, stacked)
    program = cached_program(model, "circuits", key)
    if program is None:
        with model.trace(tokens, capture="saved", compile=False) as tr:
            record_run(model, parts, last_only=last_only, stacked=stacked)
        program = keep_program(model, "circuits", key, tr.program())
    return program


def gradient_program(model: InterpretableModel, parts: Parts, tokens: mx.array, granularity: str,
                     path: str = "inputs") -> Program:
    """The program with receiver deltas and a path of integrated gradients (see the module docstring),
    recorded on ``tokens`` (the corrupted rows), cached per shape, granularity and path."""
    key = ("gradient", tuple(tokens.shape), granularity, path)
    program = cached_program(model, "circuits", key)
    if program is None:
        batch, seq = tokens.shape
        width = delta_width(parts, granularity)[-1]
        with model.trace(tokens, capture="saved", compile=False) as tr:
            deltas = {f"delta_{lp.index}": param(f"delta_{lp.index}", mx.zeros((batch, seq, width)))
                      for lp in parts.layers}
            deltas["delta_logits"] = param("delta_logits", mx.zeros((batch, 1, parts.hidden)))
            if path == "inputs":
                record_run(model, parts, granularity, deltas=deltas, alpha=param("alpha", 0.0),
                           source=param("source", tokens))
            else:
                record_run(model, parts, granularity, deltas=deltas, **_activation_params(parts, tokens))
        program = keep_program(model, "circuits", key, tr.program())
    return program


def _activation_params(parts: Parts, tokens: mx.array) -> Dict[str, Any]:
    """The activation path's traced params (``mix`` and the ``clean_*`` values)."""
    batch, seq = tokens.shape
    shape = (batch, seq, parts.graph.n_heads, parts.head_dim)
    clean = {"clean_embed": param("clean_embed", mx.zeros((batch, seq, parts.hidden)))}
    for lp in parts.layers:
        clean[f"clean_heads_{lp.index}"] = param(f"clean_heads_{lp.index}", mx.zeros(shape))
        clean[f"clean_mlp_{lp.index}"] = param(f"clean_mlp_{lp.index}", mx.zeros((batch, seq, parts.hidden)))
    return {"mix": param("mix", mx.zeros((sender_blocks(parts),))), "clean": clean}
