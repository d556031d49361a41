"""KV caches for generation: mlx-lm's own (the eager path) and a static-shaped one a compiled step can carry.

mlx-lm's ``KVCache`` grows its buffers and keeps its write position as a Python int, so a compiled step
would bake the position in. :class:`StaticKVCache` speaks the same protocol as mlx-lm's ``BatchKVCache``
(``offset`` per row for RoPE, ``update_and_fetch``, ``make_mask``) over buffers whose length is part of the
step's shape, with the write position as an array: every decode step then has the same input shapes, and
one compiled function serves them all. The buffers grow with the generation (:func:`grown_size`: the power
of two that holds the tokens so far), so a step attends over about the keys that exist, never over
``max_new_tokens`` empty columns; each new size is one more compiled step.

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
        size: columns of the buffers (:func:`grown_size`: they grow with the generation, a new size being a
            new compiled step).
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
        self._new: tuple = ()  # this call's own keys and values, as update_and_fetch received them

    @property
    def offset(self) -> mx.array:
        """Each row's position of this call's first token (RoPE offsets)."""
        return self.idx - self.left_padding

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            batch, heads, _, dim = keys.shape
            self.keys = mx.zeros((batch, heads, self.size, dim), keys.dtype)
            self.values = mx.zeros((batch, heads, self.size, values.shape[3]), values.dtype)
        self._new = (keys, values)
        return self._store(keys, values)

    def newest(self) -> tuple[mx.array, mx.array]:
        """This call's own keys and values ``(batch, kv_heads, n, head_dim)`` (attention internals' ``k``/``v``)."""
        return self._new

    def replace_newest(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Store ``keys``/``values`` in place of this call's own (a write to ``k``/``v``); return the buffers."""
        self._new = (keys.astype(self.keys.dtype), values.astype(self.values.dtype))
        return self._store(*self._new)

    def _store(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
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


MIN_BUFFER = 64


def buffer_size(needed: int) -> int:
    """Columns of a static buffer that holds ``needed`` tokens: a power of two, at least 64, so that prompts
    and lengths of similar size share one compiled step and a growing buffer is compiled for ~log2 sizes."""
    return max(MIN_BUFFER, 1 << (max(needed, 1) - 1).bit_length())


def grown_size(size: int, needed: int, limit: int) -> int:
    """The buffer size for ``needed`` tokens when ``size`` columns are made (``0``: none yet) and the
    generation computes at most ``limit`` tokens: unchanged while they fit, else :func:`buffer_size` of
    ``needed`` (never past that of ``limit``). So a buffer follows the tokens computed, not
    ``max_new_tokens``: attention over it costs what the real keys cost, within a factor of 2."""
    if needed <= size:
        return size
    return min(buffer_size(needed), buffer_size(limit))


def grow(buffers: Sequence[mx.array], size: int) -> list[mx.array]:
    """``buffers`` (``(batch, heads, columns, dim)``) extended with empty columns to ``size``."""
    out = []
    for b in buffers:
        extra = mx.zeros(b.shape[:2] + (size - b.shape[2],) + b.shape[3:], b.dtype)
        out.append(mx.concatenate([b, extra], axis=2))
    return out


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
