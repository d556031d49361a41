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

from mlxterp.compiler import PatchedForward, run_passes
from mlxterp.compiler.passes.lift import param_sources, param_values

from ..generation.program import call_with_cache

if TYPE_CHECKING:
    from ..model import InterpretableModel


def prefix_forward(model: "InterpretableModel", tokens: mx.array) -> tuple[PatchedForward, list]:
    """A forward that fills a KV cache and stops after the last layer (no norm, no vocabulary projection),
    with the model's edits, and its params (the edits' constants): call it as ``forward((tokens, caches),
    params)``."""
    last = model.layers[len(model.layers) - 1].path
    with model.trace(tokens, compile=False, capture=[last]) as tr:  # records the edits (and runs to the last layer)
        pass
    passes = run_passes(tr.graph, model._probe(tokens).events)
    forward = PatchedForward(model.model, passes.after, passes.schedule, call=call_with_cache, points=model._points)
    return forward, param_values(tr.graph, param_sources(passes.after))


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
    copy of the prefix first. Its keys are one column per position, in order, so attention internals run on it
    (``newest`` and ``replace_newest``, see :mod:`mlxterp.adapters.attention_cache`)."""

    def __init__(self, keys: mx.array, values: mx.array, k: int):
        super().__init__()
        self.prefix = (keys, values)
        self.k = k
        self.offset = int(keys.shape[2])
        self._call: tuple = ()  # the last call's (prefix, k, own keys, own values)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self._call = (self.prefix, self.k, keys, values)
        self.offset += keys.shape[2]
        return self._join(keys, values)

    def newest(self) -> tuple[mx.array, mx.array]:
        """The last call's own keys and values ``(k * batch, heads, n, dim)``."""
        return self._call[2], self._call[3]

    def replace_newest(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Hold ``keys``/``values`` in place of the last call's own; returns all the keys and values."""
        self._call = self._call[:2] + (keys, values)
        return self._join(keys, values)

    def _join(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        prefix, k = self._call[:2]
        self.keys, self.values = joined(prefix[0], keys, k), joined(prefix[1], values, k)
        self.prefix, self.k = (self.keys, self.values), 1  # a later call would see these, as in mlx-lm
        return self.keys, self.values


def joined(shared: mx.array, own: mx.array, k: int) -> mx.array:
    """``shared`` ``(b, h, p, d)`` (the same for the ``k`` variants) then ``own`` ``(k * b, h, n, d)`` along
    the positions: ``(k * b, h, p + n, d)``."""
    b = shared.shape[0]
    view = mx.broadcast_to(shared[None], (k,) + tuple(shared.shape))
    joined_ = mx.concatenate([view, own.reshape((k, b) + tuple(own.shape[1:]))], axis=3)
    return joined_.reshape((k * b,) + tuple(joined_.shape[2:]))
