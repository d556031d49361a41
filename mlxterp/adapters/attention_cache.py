"""Attention internals on a KV cache (a decode step): which keys are this call's own, and how a write to them
reaches the cache.

A forward over a whole sequence computes every position's key and value once; later positions attend to them.
A decode step computes only its new tokens' keys and values, stores them in the cache, and attends to all it
holds. So the ``k`` and ``v`` points of a call with a cache are the call's own keys and values (its newest
``n`` columns, ``(batch, n, heads, head_dim)`` as in a trace), and a write there is stored in the cache in
place of what the call computed: later calls attend to the written keys, as later positions of a
whole-sequence forward attend to a written ``k[:, p]``.

Caches that can do this: mlx-lm's ``KVCache`` and ``BatchKVCache`` (their buffers hold positions in order,
the fetched keys end with the newest), and any cache with ``newest()`` and ``replace_newest(keys, values)``
methods (generation's static cache). Others (a rotating sliding window, quantized caches) are refused.

Left padding (``BatchKVCache`` and the static cache keep ``left_padding``): a padded row's first key columns
are its padding. The cache's mask hides them; a write to scores or pattern must not reveal them, so after a
write they are masked again (scores get the dtype's lowest value, pattern 0): each row then attends only to
its own tokens, whatever the write, as the prompt alone would.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache

# mlx-lm caches whose fetched keys are the buffer's first columns, in position order (newest last)
_ORDERED = (KVCache, BatchKVCache)


def cache_support(cache: Any) -> str | None:
    """Why attention internals cannot run on ``cache`` (``None``: they can)."""
    if cache is None or type(cache) in _ORDERED or hasattr(cache, "replace_newest"):
        return None
    return (f"the model's KV cache is a {type(cache).__name__}, whose keys are not one column per position in "
            "order (mlx-lm's KVCache); attention internals in generation need one")


def newest(cache: Any, keys: mx.array, values: mx.array, n: int) -> tuple[mx.array, mx.array]:
    """This call's own keys and values ``(batch, heads, n, dim)`` among the ``keys``/``values`` the cache gave
    back (all it holds)."""
    reason = cache_support(cache)
    if reason is not None:
        raise ValueError(reason)
    if hasattr(cache, "replace_newest"):
        return cache.newest()
    return keys[..., -n:, :], values[..., -n:, :]


def replace_newest(cache: Any, keys: mx.array, values: mx.array, new_keys: mx.array,
                   new_values: mx.array) -> tuple[mx.array, mx.array]:
    """Store ``new_keys``/``new_values`` in the cache in place of this call's own; return the keys and values
    the call attends to (``keys``/``values`` with their newest columns replaced)."""
    if hasattr(cache, "replace_newest"):
        return cache.replace_newest(new_keys, new_values)
    n, end = new_keys.shape[2], keys.shape[2]
    cache.keys[..., end - n:end, :] = new_keys  # the buffer's columns the call's keys were stored in
    cache.values[..., end - n:end, :] = new_values
    return cache.keys[..., :end, :], cache.values[..., :end, :]


def keep_padding_hidden(cache: Any, value: mx.array, fill: float | None) -> mx.array:
    """``value`` (scores or pattern, ``(batch, heads, q, k)``) with each row's padding columns set back to
    ``fill`` (``None``: the dtype's lowest value), if the cache has left padding."""
    padding = getattr(cache, "left_padding", None)
    if padding is None:
        return value
    real = mx.arange(value.shape[-1])[None, :] >= padding[:, None]  # (batch, keys)
    fill_value = mx.finfo(value.dtype).min if fill is None else fill
    return mx.where(real[:, None, None, :], value, mx.array(fill_value, value.dtype))
