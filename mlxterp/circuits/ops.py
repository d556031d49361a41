"""Pure MLX functions the circuit programs apply inside traces (``mlxterp.apply``): per-head outputs,
per-head projections of receiver-specific inputs, the embedding interpolation of integrated gradients.

Weights are read from the modules when a function runs, never captured as values: inside a compiled program
they are the model's state (weight edits are seen), and a program never holds a copy. Layouts are
component-major: ``(components, batch, seq, hidden)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn


def dense_weight(linear: nn.Module) -> mx.array:
    """A linear layer's ``(out, in)`` weight as a float array (a quantized one dequantized, exactly)."""
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.get("biases"), linear.group_size, linear.bits,
                             mode=getattr(linear, "mode", "affine"))
    return linear.weight


def unhooked(module: nn.Module) -> Callable[[mx.array], mx.array]:
    """``module``'s own ``__call__``, bypassing a trace's hook (the class a trace swaps in is a subclass
    marked ``__mlxterp_hooked__``): for applying a norm or an embedding to values of our own inside a trace."""
    cls = type(module)
    while "__mlxterp_hooked__" in cls.__dict__:
        cls = cls.__mro__[1]
    call = cls.__call__
    return lambda x: call(module, x)


def head_outputs(heads: mx.array, which: Optional[Sequence[int]] = None, *, o_proj: nn.Module) -> mx.array:
    """Each head's contribution to the attention output: ``heads[..., h, :] @ W_O[:, h]^T``.

    Args:
        heads: ``(batch, seq, n_heads, head_dim)``, the attention's ``heads`` point.
        which: the heads wanted (default: all), in this order.
        o_proj: the output projection (its bias, if any, belongs to no head).

    Returns:
        ``(len(which), batch, seq, hidden)``; over every head, summed (plus the bias) it is the attention output.
    """
    batch, seq, n, dim = heads.shape
    weight = dense_weight(o_proj)
    per_head = weight.reshape(weight.shape[0], n, dim).transpose(1, 2, 0)  # (n, head_dim, hidden)
    rows = heads.transpose(2, 0, 1, 3)
    if which is not None and list(which) != list(range(n)):
        index = mx.array(list(which), dtype=mx.int32)
        per_head, rows = per_head[index], rows[index]
    rows = rows.reshape(rows.shape[0], batch * seq, dim)
    return (rows @ per_head.astype(rows.dtype)).reshape(rows.shape[0], batch, seq, -1)


def stack_senders(heads: mx.array, mlp: mx.array, *, o_proj: nn.Module) -> mx.array:
    """A layer's senders ``(n_heads + 1, batch, seq, hidden)``: its heads' outputs, then its MLP's output."""
    return mx.concatenate([head_outputs(heads, o_proj=o_proj), mlp[None].astype(heads.dtype)], axis=0)


def head_projection(inputs: mx.array, heads: Sequence[int], n_heads: int, *, norm: nn.Module,
                    linear: nn.Module) -> mx.array:
    """Projections of receiver-specific inputs: head ``heads[i]``'s slice of ``linear(norm(inputs[i]))``.

    Args:
        inputs: ``(len(heads), batch, seq, hidden)``, one residual-stream input per head.
        norm: the norm module before the projection (applied to each input on its own).
        linear: the q, k or v projection, ``n_heads * head_dim`` outputs.
        heads: which head each input feeds.
        n_heads: the projection's heads.

    Returns:
        ``(len(heads), batch, seq, head_dim)``.
    """
    count, batch, seq, hidden = inputs.shape
    weight = dense_weight(linear)
    dim = weight.shape[0] // n_heads
    index = mx.array(list(heads), dtype=mx.int32)
    per_head = weight.reshape(n_heads, dim, hidden)[index].transpose(0, 2, 1)  # (count, hidden, head_dim)
    normed = unhooked(norm)(inputs).reshape(count, batch * seq, hidden)
    out = normed @ per_head.astype(normed.dtype)
    if "bias" in linear:
        out = out + linear.bias.reshape(n_heads, 1, dim)[index].astype(out.dtype)
    return out.reshape(count, batch, seq, dim)


def splice_heads(projected: mx.array, replacement: mx.array, heads: Sequence[int], n_heads: int) -> mx.array:
    """``projected`` ``(batch, seq, n_heads * head_dim)`` with head ``heads[i]``'s slice replaced by
    ``replacement[i]`` (``(len(heads), batch, seq, head_dim)``)."""
    dim = projected.shape[-1] // n_heads
    where = {h: i for i, h in enumerate(heads)}
    parts = [replacement[where[h]].astype(projected.dtype) if h in where else projected[..., h * dim:(h + 1) * dim]
             for h in range(n_heads)]
    return mx.concatenate(parts, axis=-1)


def interpolate(embedded: mx.array, source: mx.array, alpha: mx.array, *, embed: nn.Module) -> mx.array:
    """``(1 - alpha) * embedded + alpha * embed(source)``: the input of integrated gradients' point ``alpha``
    (``alpha = 0`` gives ``embedded`` exactly, ``alpha = 1`` the source tokens' embedding exactly)."""
    other = unhooked(embed)(source).astype(embedded.dtype)
    return (1 - alpha) * embedded + alpha * other


def add_slice(value: mx.array, delta: mx.array, start: int, stop: int) -> mx.array:
    """``value + delta[..., start:stop]`` (one receiver's share of a layer's stacked deltas)."""
    return value + delta[..., start:stop].astype(value.dtype)


def last_plus(value: mx.array, delta: mx.array) -> mx.array:
    """The last position of ``value`` (``(batch, 1, hidden)``) plus ``delta``."""
    return value[:, -1:] + delta.astype(value.dtype)


def norm_vjp(x: mx.array, cotangents: mx.array, *, norm: nn.Module) -> mx.array:
    """``J_norm(x)^T c`` for each cotangent ``c`` in ``cotangents`` ``(n, ..., hidden)`` (``x``: ``(..., hidden)``)."""
    copies = mx.broadcast_to(x[None], cotangents.shape)
    return mx.vjp(unhooked(norm), [copies], [cotangents.astype(x.dtype)])[1][0]


def per_head_cotangents(grad: mx.array, n_heads: int, *, linear: nn.Module) -> mx.array:
    """``grad[..., h] @ W[h]`` for each head: the gradient at the projection's input that reaches it through
    head ``h``'s slice of the projection alone. ``grad``: ``(batch, seq, n_heads * head_dim)``; returns
    ``(n_heads, batch, seq, in)``."""
    batch, seq, width = grad.shape
    weight = dense_weight(linear)
    dim = width // n_heads
    per_head = weight.reshape(n_heads, dim, weight.shape[1])  # (n, head_dim, in)
    rows = grad.reshape(batch * seq, n_heads, dim).transpose(1, 0, 2)  # (n, batch * seq, head_dim)
    return (rows @ per_head.astype(rows.dtype)).reshape(n_heads, batch, seq, -1)


def take_last(x: Any) -> Any:
    """``x[:, -1:]`` for a ``(batch, seq, ...)`` array (the metric reads the last position only)."""
    return x[:, -1:]


def mix_in(value: mx.array, clean: mx.array, mix: mx.array, block: int) -> mx.array:
    """``value + mix[block] * (clean - value)``: a block of senders' outputs moved ``mix[block]`` of the way
    to ``clean`` (the activation path of integrated gradients; ``mix[block] = 0`` gives ``value`` exactly)."""
    a = mix[block].astype(value.dtype)
    return value + a * (clean.astype(value.dtype) - value)
