"""A conversation's KV cache: the keys and values of the tokens computed so far, resumed by the next turn.

A generation of a conversation (see :class:`mlxterp.generation.Generation`, which calls
:meth:`~ConversationCache.resume` and :meth:`~ConversationCache.keep` when its program records nothing) starts its
engine from the longest prefix of token ids the cache holds and runs only the rest, then keeps the KV of everything it
fed the model: the conversation and the new tokens. In a causal model a position's keys and values depend only on the
tokens up to it, so any prefix of what was computed is exact for every conversation that starts with those tokens.

The cache is kept for one model and its weights as they were. It holds a view of every weight array (no
copy) and the address of its data: weights replaced since (``model.update``, ``load_weights``) or written
in place (``w[...] = x``: the held view keeps the old data, so the write lands in new memory) have other
addresses, and the next generation starts from nothing. (The held views keep replaced weights in memory
until the conversation's next generation or :meth:`ConversationCache.clear`.)
"""

from __future__ import annotations

import weakref
from typing import Any, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache

from ..generation.cache import buffer_size
from ..generation.program import MlxLmEngine, StaticEngine

KV = list[tuple[mx.array, mx.array]]  # per layer: keys and values (batch 1, kv_heads, positions, head_dim)


class ConversationCache:
    """The KV of a conversation's computed tokens, shared by the conversations made from one another.

    Attributes:
        reused: prompt positions the last generation took from the cache.
        computed: prompt positions the last generation ran (the rest of its prompt).
    """

    def __init__(self) -> None:
        self._tokens: tuple[int, ...] = ()
        self._kv: KV = []
        self._model: Optional[weakref.ref] = None
        self._weights: list[mx.array] = []  # views of the weights the KV was computed with (no copies)
        self._addresses: tuple = ()  # where their data lies
        self.reused = 0
        self.computed = 0

    @property
    def size(self) -> int:
        """How many positions the cache holds."""
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        """The token ids whose keys and values the cache holds."""
        return list(self._tokens)

    def copy(self) -> "ConversationCache":
        """A cache holding the same positions, independent from now on (the arrays are shared: MLX arrays are
        values). Branches of a conversation that alternate evict each other's positions from a shared cache;
        give each a copy: ``Conversation(tok, messages, cache=conv.cache.copy())``."""
        other = ConversationCache()
        other._tokens, other._kv, other._model = self._tokens, list(self._kv), self._model
        other._weights, other._addresses = self._weights, self._addresses
        return other

    def clear(self) -> None:
        """Forget everything (the next generation runs its whole prompt)."""
        self._tokens, self._kv, self._model, self._weights, self._addresses = (), [], None, [], ()

    def resume(self, model: nn.Module, engine: Any, row: Sequence[int]) -> int:
        """Start ``engine`` (no step run yet) from the cached KV of the longest common prefix of ``row`` and the
        cached tokens, at least one token short of ``row`` (its last position's logits are needed); return
        how many positions it holds (0: none, the whole row runs)."""
        shared = _common_prefix(self._tokens, row) if self._valid_for(model) else 0
        shared = min(shared, len(row) - 1)
        if shared == 0 or not _seed(engine, [(k[:, :, :shared], v[:, :, :shared]) for k, v in self._kv], shared):
            shared = 0
        self.reused, self.computed = shared, len(row) - shared
        return shared

    def keep(self, model: nn.Module, engine: Any, tokens: Sequence[int]) -> None:
        """Hold ``engine``'s KV after a run as that of ``tokens`` (the prompt and the new tokens kept; the
        engine may have fed fewer or more: only positions both cover are kept)."""
        found = _captured(engine)
        if found is None:
            self.clear()
            return
        fed, kv = found
        n = min(fed, len(tokens))
        self._tokens = tuple(int(t) for t in tokens[:n])
        self._kv = [(k[:, :, :n], v[:, :, :n]) for k, v in kv]
        self._model = weakref.ref(model)
        self._weights = [a.reshape(a.shape) for _, a in tree_flatten(model.parameters())]  # views: same data
        mx.eval(self._weights)
        self._addresses = _addresses(self._weights)

    def _valid_for(self, model: nn.Module) -> bool:
        if self._model is None or self._model() is not model:
            return False
        now = _addresses([a for _, a in tree_flatten(model.parameters())])
        return None not in now and now == self._addresses

    def __repr__(self) -> str:
        return f"ConversationCache({self.size} positions; last generation reused {self.reused}, ran {self.computed})"


def _addresses(arrays: Sequence[mx.array]) -> tuple:
    """Where each array's data lies, with its shape and dtype (None where unknown: a strided array)."""
    out = []
    for a in arrays:
        view = memoryview(a)
        if view.nbytes and not view.c_contiguous:
            out.append(None)
            continue
        start = np.frombuffer(view.cast("B"), np.uint8).__array_interface__["data"][0] if view.nbytes else 0
        out.append((start, a.shape, a.dtype))
    return tuple(out)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _seed(engine: Any, kv: KV, n: int) -> bool:
    """Put ``kv`` (``n`` positions) into a fresh engine's cache; False for an engine this does not know."""
    if isinstance(engine, MlxLmEngine):
        caches = engine.caches
        if len(caches) != len(kv) or not all(type(c) is KVCache for c in caches):
            return False
        for cache, (keys, values) in zip(caches, kv):
            cache.keys, cache.values, cache.offset = keys, values, n
        return True
    if isinstance(engine, StaticEngine) and len(kv) == engine.n_layers:
        size = max(engine.size, buffer_size(n))  # the engine's buffer size, or one that holds the n positions
        engine.buffers = [_padded(a, size) for pair in kv for a in pair]
        engine.size, engine.idx = size, n
        return True
    return False


def _padded(a: mx.array, size: int) -> mx.array:
    """``a`` (``(batch, heads, n, dim)``) with empty columns up to ``size``."""
    return mx.concatenate([a, mx.zeros(a.shape[:2] + (size - a.shape[2],) + a.shape[3:], a.dtype)], axis=2)


def _captured(engine: Any) -> Optional[tuple[int, KV]]:
    """How many positions ``engine`` fed, and its KV (None for an engine or cache this does not know)."""
    if isinstance(engine, MlxLmEngine):
        caches = engine.caches
        if not caches or not all(type(c) is KVCache and c.keys is not None for c in caches):
            return None
        n = caches[0].offset
        return n, [(c.keys[:, :, :n], c.values[:, :, :n]) for c in caches]
    if isinstance(engine, StaticEngine) and engine.buffers:
        b = engine.buffers
        return engine.idx, [(b[2 * i][:, :, :engine.idx], b[2 * i + 1][:, :, :engine.idx])
                            for i in range(len(b) // 2)]
    return None
