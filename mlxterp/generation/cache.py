"""KV caches for generation: mlx-lm's own (the eager path) and a fixed-size one a compiled step can carry.

mlx-lm's ``KVCache`` grows its buffers and keeps its write position as a Python int, so a compiled step
would bake the position in. :class:`StaticKVCache` speaks the same protocol as mlx-lm's ``BatchKVCache``
(``offset`` per row for RoPE, ``update_and_fetch``, ``make_mask``) over buffers of a fixed length, with the
write position as an array: every decode step then has the same input shapes, and one compiled function
serves them all.

Batches are left-padded as mlx-lm's batch generation pads them: row ``b``'s real tokens start at column
``left_padding[b]``, its positions (RoPE offsets) count from there, and the mask hides the padding.
"""

from __future__ import annotations

from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache


class StaticKVCache:
    """mlx-lm's cache protocol over buffers of ``size`` columns, written at the array position ``idx``.

    Args:
        size: columns of the buffers (prompt plus new tokens, rounded up by :func:`buffer_size`).
        idx: int32 scalar array, the column where this call's tokens go.
        left_padding: int32 array ``(batch,)``, padding columns before each row's first real token.
        keys, values: the buffers ``(batch, kv_heads, size, head_dim)``; ``None`` before the prompt pass
            (they are allocated by the first ``update_and_fetch``, with the keys' dtype).
    """

    def __init__(self, size: int, idx: mx.array, left_padding: mx.array, keys: Any = None, values: Any = None):
        self.size = size
        self.idx = idx
        self.left_padding = left_padding
        self.keys = keys
        self.values = values

    @property
    def offset(self) -> mx.array:
        """Each row's position of this call's first token (RoPE offsets)."""
        return self.idx - self.left_padding

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            batch, heads, _, dim = keys.shape
            self.keys = mx.zeros((batch, heads, self.size, dim), keys.dtype)
            self.values = mx.zeros((batch, heads, self.size, values.shape[3]), values.dtype)
        start = self.idx.reshape(1)
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        return self.keys, self.values

    def make_mask(self, N: int, return_array: bool = False, window_size: Any = None) -> mx.array:
        """Query ``i`` of this call (column ``idx + i``) sees columns ``left_padding <= j <= idx + i``."""
        if window_size is not None:
            raise NotImplementedError("StaticKVCache has no sliding window; generation uses mlx-lm's cache here")
        cols = mx.arange(self.size)
        causal = cols[None, :] <= (self.idx + mx.arange(N))[:, None]  # (N, size)
        real = cols[None, :] >= self.left_padding[:, None]  # (batch, size)
        return causal[None, None] & real[:, None, None, :]

    @property
    def state(self) -> tuple:
        return self.keys, self.values

    def empty(self) -> bool:
        return self.keys is None


def buffer_size(needed: int) -> int:
    """Columns of the static buffers for ``needed`` tokens: 64, 128, then multiples of 256, so that
    prompts and lengths of similar size share one compiled step."""
    for size in (64, 128):
        if needed <= size:
            return size
    return -(-needed // 256) * 256


def static_caches(n_layers: int, size: int, idx: mx.array, left_padding: mx.array,
                  buffers: Sequence[mx.array] = ()) -> list[StaticKVCache]:
    """One :class:`StaticKVCache` per layer; ``buffers`` is ``[k0, v0, k1, v1, ...]`` (empty before the prompt)."""
    if not buffers:
        return [StaticKVCache(size, idx, left_padding) for _ in range(n_layers)]
    return [StaticKVCache(size, idx, left_padding, buffers[2 * i], buffers[2 * i + 1]) for i in range(n_layers)]


def buffers_of(caches: Sequence[StaticKVCache]) -> list[mx.array]:
    """``[k0, v0, k1, v1, ...]`` of static caches after a call."""
    return [a for c in caches for a in (c.keys, c.values)]


def cache_layers(model: nn.Module) -> list[Any]:
    """A fresh mlx-lm prompt cache for ``model`` (one entry per layer, as mlx-lm makes it)."""
    return make_prompt_cache(model)


def static_eligible(model: nn.Module) -> bool:
    """Whether every layer's mlx-lm cache is a plain ``KVCache`` (what :class:`StaticKVCache` replaces)."""
    try:
        caches = make_prompt_cache(model)
    except Exception:  # a model mlx-lm cannot make a cache for: not eligible, the eager path will say why
        return False
    return bool(caches) and all(type(c) is KVCache for c in caches)


def mlx_lm_caches(model: nn.Module, left_padding: Sequence[int]) -> list[Any]:
    """mlx-lm's cache for a batch: its own per-layer caches, ``BatchKVCache`` ones when rows are padded.

    Raises:
        ValueError: padded rows on a model whose cache mlx-lm cannot batch with padding.
    """
    caches = make_prompt_cache(model)
    if not any(left_padding):
        return caches
    if not all(type(c) is KVCache for c in caches):
        kinds = sorted({type(c).__name__ for c in caches})
        raise ValueError(f"prompts of different lengths need a padded batch, and this model's cache "
                         f"({', '.join(kinds)}) does not support padding; generate each prompt separately "
                         "or give prompts of one token length")
    return [BatchKVCache(list(left_padding)) for _ in caches]
