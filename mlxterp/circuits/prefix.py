"""A prompt's shared prefix, run once on a KV cache and seen by every variant of a batch.

Where ``K`` variants of a run agree on every value at positions ``< p0`` (attention is causal, so what differs
from ``p0`` on never reaches earlier positions), the first ``p0`` tokens run once, on ``batch`` rows, filling
mlx-lm's KV cache (:func:`prefix_forward`, :class:`PrefixCache`), and only the rest of the prompt runs in the
variants, each layer's cache seen by every block of rows running through it (:class:`VariantCache`): what an
mlx-lm decode step does. DAS (an interchange from position ``p0`` on) and edge patching (clean and corrupted
prompts that agree before ``p0``) use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from mlxterp.compiler import Graph, PatchedForward, run_passes

from ..generation.program import call_with_cache

if TYPE_CHECKING:
    from ..model import InterpretableModel


def prefix_forward(model: "InterpretableModel", tokens: mx.array) -> PatchedForward:
    """A forward that fills a KV cache and stops after the last layer (no norm, no vocabulary projection)."""
    last = model.layers[len(model.layers) - 1].path
    graph = Graph(captures=((last, 0),))
    passes = run_passes(graph, model._probe(tokens).events)
    return PatchedForward(model.model, passes.after, passes.schedule, call=call_with_cache, points=model._points)


class PrefixCache(KVCache):
    """mlx-lm's ``KVCache`` holding exactly the keys and values it was given (mlx-lm's grows a zero-filled
    buffer in steps of 256 positions): the prefix pass fills one on ``batch`` rows."""

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = mx.concatenate([self.keys, keys], axis=2)
            self.values = mx.concatenate([self.values, values], axis=2)
        self.offset += keys.shape[2]
        return self.keys, self.values

    def repeated(self, k: int) -> "VariantCache":
        """The cache as ``k`` variants of the batch see it (see :class:`VariantCache`)."""
        return VariantCache(self.keys, self.values, k)


class VariantCache(KVCache):
    """A prefix's keys and values ``(batch, heads, p0, dim)`` seen by ``k`` variants of the batch (rows
    ``j * batch .. (j + 1) * batch - 1``, as :func:`~mlxterp.compiler.fold.fold_tokens` lays them out): each
    call's keys ``(k * batch, heads, n, dim)`` are joined to the shared prefix in one copy, never a repeated
    copy of the prefix first."""

    def __init__(self, keys: mx.array, values: mx.array, k: int):
        super().__init__()
        self.prefix = (keys, values)
        self.k = k
        self.offset = int(keys.shape[2])

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys, self.values = (joined(shared, own, self.k) for shared, own in zip(self.prefix, (keys, values)))
        self.prefix = (self.keys, self.values)  # a later call would see these, as in mlx-lm
        self.k = 1
        self.offset += keys.shape[2]
        return self.keys, self.values


def joined(shared: mx.array, own: mx.array, k: int) -> mx.array:
    """``shared`` ``(b, h, p, d)`` (the same for the ``k`` variants) then ``own`` ``(k * b, h, n, d)`` along
    the positions: ``(k * b, h, p + n, d)``."""
    b = shared.shape[0]
    view = mx.broadcast_to(shared[None], (k,) + tuple(shared.shape))
    joined_ = mx.concatenate([view, own.reshape((k, b) + tuple(own.shape[1:]))], axis=3)
    return joined_.reshape((k * b,) + tuple(joined_.shape[2:]))
