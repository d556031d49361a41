"""Attention internals: the math of a fused attention call, written out so its parts can be read and written.

mlx-lm's attention layers compute their queries, keys and values (projections, norms, RoPE), then call
``scaled_dot_product_attention`` (``mx.fast.scaled_dot_product_attention`` underneath), then project the
heads. A traced layer whose internals are asked for runs its own ``__call__`` with that one call replaced
by :func:`explicit_attention`, which emits, in order:

``q``, ``k``, ``v``  ``(batch, seq, heads, head_dim)``: queries and keys after RoPE, values (keys and values
                     have the model's key-value heads under grouped-query attention);
``scores``           ``(batch, heads, q, k)``: scaled (and, for Gemma 2, soft-capped) query-key products
                     with the mask applied: masked entries hold the dtype's lowest finite value;
``pattern``          ``(batch, heads, q, k)``: the softmax of the scores, each row summing to 1;
``heads``            ``(batch, seq, heads, head_dim)``: each head's output, before the output projection.

The computation follows MLX's own reference for the fused kernel step by step (scale the queries, group
the query heads over their key-value head, mask with the dtype's lowest value or add an additive mask,
precise softmax, attention sinks as an extra column), so an explicit layer equals the fused one. Every
layer not asked keeps the fused kernel.

Padding: a right-padded batch carries no padding mask (mlx-lm models take none), so the pattern row of a
padded position (after a prompt's last real token) attends to the real tokens and the padding before it,
like any row; it is meaningless but, attention being causal, never reaches a real position, whose row
gives padding (always later) weight 0.

A decode step (a call with a KV cache) attends to every key the cache holds: there ``k`` and ``v`` are the
call's own keys and values (its new tokens' columns, as a trace of the whole sequence has them at those
positions), a write to them is stored in the cache, and ``scores``/``pattern`` have one key column per cached
position (see :mod:`.attention_cache`).

Gemma 2 does not call the fused kernel (it soft-caps its scores); its layers run :func:`softcap_runner`,
the same steps written for its attention module.
"""

from __future__ import annotations

import contextvars
import inspect
import types
from typing import Any, Callable, Dict, Optional

import mlx.core as mx
import mlx.nn as nn

from mlxterp.compiler import Runner

from . import attention_cache

POINTS = ("q", "k", "v", "scores", "pattern", "heads")
KEY_AXIS_POINTS = ("scores", "pattern")  # their last axis is the key axis: one column per attended position

Emit = Callable[[str, Any], Any]

# The emit function of the attention call running explicitly on this thread (None: none is).
_EMIT: contextvars.ContextVar[Optional[Emit]] = contextvars.ContextVar("mlxterp_attention_emit", default=None)
# An attention class's __call__ -> a copy of it whose scaled_dot_product_attention is explicit_sdpa.
_EXPLICIT_CALLS: Dict[Callable, Callable] = {}


def _by_head(x: mx.array) -> mx.array:
    """``(batch, heads, seq, dim)`` <-> ``(batch, seq, heads, dim)`` (a transpose: its own inverse)."""
    return x.transpose(0, 2, 1, 3)


def _mask_scores(scores: mx.array, mask: Any, n_kv: int, repeats: int) -> mx.array:
    """Scores ``(B, n_kv, repeats, L, S)`` (or ``(B, H, L, S)``) with ``mask`` applied as MLX's fused kernel
    applies it: ``"causal"`` aligns the last query with the last key; a boolean mask keeps what is true (the
    rest gets the dtype's lowest finite value); any other array is added."""
    if mask is None:
        return scores
    q_len, k_len = scores.shape[-2:]
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"attention mask {mask!r} is not supported; expected 'causal', an array or None")
        mask = mx.arange(k_len - q_len, k_len)[:, None] >= mx.arange(k_len)[None]
    elif mask.ndim >= 3 and scores.ndim == 5:  # per-head masks are grouped like the query heads
        full = mx.broadcast_to(mask, (scores.shape[0], n_kv * repeats, q_len, k_len))
        mask = full.reshape(scores.shape)
    if mask.dtype == mx.bool_:
        return mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    return scores + mask.astype(scores.dtype)


def _softmax(scores: mx.array, sinks: Optional[mx.array]) -> mx.array:
    """Precise softmax over keys; attention sinks (one logit per head) join as a first column, then go."""
    if sinks is None:
        return mx.softmax(scores, axis=-1, precise=True)
    column = mx.broadcast_to(sinks.astype(scores.dtype)[None, :, None, None], scores.shape[:-1] + (1,))
    return mx.softmax(mx.concatenate([column, scores], axis=-1), axis=-1, precise=True)[..., 1:]


def explicit_attention(queries: mx.array, keys: mx.array, values: mx.array, *, scale: float, mask: Any,
                       emit: Emit, sinks: Optional[mx.array] = None, softcap: Optional[float] = None,
                       cache: Any = None) -> mx.array:
    """``softmax(scale * q @ k.T + mask) @ v`` on ``(batch, heads, seq, dim)`` arrays, emitting each point of
    :data:`POINTS` (see the module docstring). Returns ``(batch, heads, seq, v_dim)``, like the fused call.

    Args:
        queries, keys, values: after RoPE, ``(batch, heads, seq, dim)``; keys and values may have fewer
            heads (grouped-query attention). With a ``cache``, keys and values are all it holds.
        scale: multiplies the queries.
        mask: ``None``, ``"causal"``, a boolean array (true = attend) or an additive array.
        emit: ``emit(name, value) -> value`` at each point.
        sinks: per-head attention-sink logits, or ``None``.
        softcap: Gemma 2's ``attn_logit_softcapping`` (scores become ``tanh(s / c) * c``), or ``None``.
        cache: the KV cache the keys and values came from in a decode step (``None`` otherwise). With one,
            ``k`` and ``v`` are this call's own columns and writes there are stored in the cache (see
            :mod:`.attention_cache`).
    """
    dtype = mx.result_type(queries, keys, values)
    q = _by_head(emit("q", _by_head(queries.astype(dtype))))
    k, v = _keys_and_values(keys, values, cache, q.shape[2], dtype, emit)
    batch, n_heads, q_len, dim = q.shape
    n_kv = k.shape[1]
    repeats = n_heads // n_kv
    q = q * mx.array(scale, q.dtype)
    if repeats > 1:  # the fused kernel's grouping: (B, n_kv, repeats, L, D) against (B, n_kv, 1, S, D)
        q = q.reshape(batch, n_kv, repeats, q_len, dim)
        k, v = mx.expand_dims(k, 2), mx.expand_dims(v, 2)
    scores = q @ k.swapaxes(-1, -2)
    if softcap is not None:
        scores = mx.tanh(scores / softcap) * softcap
    scores = _mask_scores(scores, mask, n_kv, repeats)
    k_len = scores.shape[-1]
    scores = _emitted(emit, "scores", scores.reshape(batch, n_heads, q_len, k_len), cache, None)
    pattern = _emitted(emit, "pattern", _softmax(scores, sinks), cache, 0.0)
    if repeats > 1:
        pattern = pattern.reshape(batch, n_kv, repeats, q_len, k_len)
    out = (pattern @ v).reshape(batch, n_heads, q_len, v.shape[-1])
    return _by_head(emit("heads", _by_head(out)))


def _keys_and_values(keys: mx.array, values: mx.array, cache: Any, n: int, dtype: Any, emit: Emit) -> tuple:
    """Emit ``k`` and ``v``: the whole arrays without a cache, this call's own ``n`` columns with one (a write
    there is stored in the cache). Returns the keys and values to attend to, ``(batch, heads, keys, dim)``."""
    if cache is None:
        return (_by_head(emit("k", _by_head(keys.astype(dtype)))),
                _by_head(emit("v", _by_head(values.astype(dtype)))))
    own_k, own_v = (_by_head(a.astype(dtype)) for a in attention_cache.newest(cache, keys, values, n))
    k, v = emit("k", own_k), emit("v", own_v)
    if k is not own_k or v is not own_v:  # written: what the cache holds for these positions from now on
        keys, values = attention_cache.replace_newest(cache, keys, values, _by_head(k), _by_head(v))
    return keys.astype(dtype), values.astype(dtype)


def _emitted(emit: Emit, name: str, value: mx.array, cache: Any, fill: Optional[float]) -> mx.array:
    """``emit(name, value)``; a written value keeps a padded row's padding columns hidden (see
    :mod:`.attention_cache`)."""
    out = emit(name, value)
    return out if out is value or cache is None else attention_cache.keep_padding_hidden(cache, out, fill)


def explicit_sdpa(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float, mask: Any,
                  sinks: Optional[mx.array] = None) -> mx.array:
    """mlx-lm's ``scaled_dot_product_attention``, explicit, emitting to the running attention call's points."""
    emit = _EMIT.get()
    if emit is None:  # not inside a runner (a copied __call__ used elsewhere): behave as mlx-lm does
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask, sinks=sinks)
    if hasattr(cache, "bits"):
        raise ValueError("attention internals need an unquantized KV cache: this call received a quantized one "
                         f"({type(cache).__name__}, {cache.bits} bits)")
    return explicit_attention(queries, keys, values, scale=scale, mask=mask, emit=emit, sinks=sinks, cache=cache)


def _explicit_call(original: Callable) -> Callable:
    """A copy of an attention class's ``__call__`` that calls :func:`explicit_sdpa` where it called mlx-lm's
    ``scaled_dot_product_attention`` (its module globals copied with that one name replaced; nothing global
    changes)."""
    found = _EXPLICIT_CALLS.get(original)
    if found is None:
        namespace = dict(original.__globals__, scaled_dot_product_attention=explicit_sdpa)
        found = types.FunctionType(original.__code__, namespace, original.__name__, original.__defaults__,
                                   original.__closure__)
        found.__kwdefaults__ = original.__kwdefaults__
        _EXPLICIT_CALLS[original] = found
    return found


def sdpa_runner(module: nn.Module, original: Callable, args: tuple, kwargs: dict, emit: Emit) -> Any:
    """Run an attention module whose ``__call__`` calls mlx-lm's ``scaled_dot_product_attention``, explicitly."""
    token = _EMIT.set(emit)
    try:
        return _explicit_call(original)(module, *args, **kwargs)
    finally:
        _EMIT.reset(token)


def softcap_runner(module: nn.Module, original: Callable, args: tuple, kwargs: dict, emit: Emit) -> Any:
    """Gemma 2's attention (``mlx_lm.models.gemma2.Attention.__call__``, which soft-caps its scores instead of
    calling the fused kernel), with its points emitted."""
    bound = inspect.signature(original).bind(module, *args, **kwargs)
    bound.apply_defaults()
    x, mask, cache = bound.arguments["x"], bound.arguments["mask"], bound.arguments["cache"]
    batch, seq, _ = x.shape
    queries, keys, values = module.q_proj(x), module.k_proj(x), module.v_proj(x)
    queries = _by_head(queries.reshape(batch, seq, module.n_heads, -1))
    keys = _by_head(keys.reshape(batch, seq, module.n_kv_heads, -1))
    values = _by_head(values.reshape(batch, seq, module.n_kv_heads, -1))
    offset = {} if cache is None else {"offset": cache.offset}
    queries, keys = module.rope(queries, **offset), module.rope(keys, **offset)
    if cache is not None:
        keys, values = cache.update_and_fetch(keys, values)
    out = explicit_attention(queries, keys, values, scale=module.scale, mask=mask, emit=emit,
                             softcap=module.attn_logit_softcapping, cache=cache)
    return module.o_proj(_by_head(out).reshape(batch, seq, -1))


RUNNERS: Dict[str, Runner] = {"sdpa": sdpa_runner, "softcap": softcap_runner}


class AttentionPoints:
    """The compiler's :class:`~mlxterp.compiler.Points` for one model: each attention module's
    :data:`POINTS`, computed by the runner of its kind (``{attention path: kind}``, kinds in :data:`RUNNERS`)."""

    def __init__(self, kinds: Dict[str, str]):
        unknown = {k for k in kinds.values() if k not in RUNNERS}
        if unknown:
            raise ValueError(f"attention kinds {sorted(unknown)} have no runner; known: {sorted(RUNNERS)}")
        self.kinds = dict(kinds)

    def owner(self, path: str) -> Optional[str]:
        head, _, name = path.rpartition(".")
        return head if name in POINTS and head in self.kinds else None

    def runner(self, module_path: str) -> Optional[Runner]:
        kind = self.kinds.get(module_path)
        return None if kind is None else RUNNERS[kind]
