"""Pure MLX functions of the patched forward (applied inside its trace; see :mod:`.patching`).

The forward's rows are ``K`` variants of the clean prompts (``batch`` rows each); the source run (the
corrupted prompts, ``sources`` rows) is not among them: its values at each site and its senders' outputs
come in beside the rows (:mod:`.sources`). A variant either *keeps* edges (a circuit: every receiver reads
the ablated input plus its kept edges' differences) or *patches* them (every receiver reads its own input,
with the patched edges' differences taken away). Work is done per variant, for that variant's own edges
only, so a circuit of ``n`` edges costs about ``n`` sender reads per row whatever the other variants hold.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn

from .ops import head_projection, splice_heads

Picks = Tuple[Tuple[int, int], ...]  # (block, index) of each sender a variant reads at a site


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the rows of a patched forward are laid out (static: part of the program's structure).

    Attributes:
        sources: source rows (the corrupted prompts; their values come in beside the forward's rows).
        batch: rows per variant (the clean prompts).
        kept: per variant, whether it keeps edges (a circuit) or patches them.
        mean: ablated values are the mean over the source rows (else source row ``i`` for clean row ``i``).
    """

    sources: int
    batch: int
    kept: Tuple[bool, ...]
    mean: bool

    def rows(self, k: int) -> slice:
        """Variant ``k``'s rows."""
        return slice(k * self.batch, (k + 1) * self.batch)


def _ablated(source: mx.array, layout: Layout, axis: int) -> mx.array:
    """The ablated value for each clean row: the source rows, or their mean (broadcast over ``batch`` rows)."""
    if not layout.mean:
        return source
    mean = source.mean(axis=axis, keepdims=True)
    shape = list(mean.shape)
    shape[axis] = layout.batch
    return mx.broadcast_to(mean, shape)


def base_rows(x: mx.array, source: mx.array, layout: Layout) -> mx.array:
    """The input every receiver of a site starts from, per variant: the ablated value (a circuit) or the
    variant's own (patching). ``x``: ``(rows, seq, hidden)``; ``source``: the source run's ``(sources, seq,
    hidden)`` there."""
    ablated = _ablated(source, layout, 0).astype(x.dtype)
    return mx.concatenate([ablated if kept else x[layout.rows(k)] for k, kept in enumerate(layout.kept)], axis=0)


def packed_inputs(base: mx.array, weights: Sequence[mx.array], *blocks: mx.array, layout: Layout,
                  picks: Sequence[Picks], last: bool) -> mx.array:
    """The inputs of the receivers that have edges, variant by variant, packed along the first axis: variant
    ``k`` contributes ``weights[k].shape[0]`` receivers reading ``base + sum_u weights[k][r, u] * (z_u - z_u')``
    over its rows, with ``z_u`` the sender's output there and ``z_u'`` its ablated value.

    Args:
        base: ``(rows, seq, hidden)`` from :func:`base_rows`.
        weights: per variant, ``(receivers, senders)``: +1 for a kept edge, -1 for a patched one, 0 for none.
        blocks: sender outputs, ``n`` blocks ``(count, rows, seq_all, hidden)`` (a layer's heads, an MLP, the
            embedding) then the same ``n`` blocks of the source run ``(count, sources, seq_all, hidden)``.
        layout: the rows' :class:`Layout`.
        picks: per variant, the ``(block, index)`` of each sender in its ``weights``' columns.
        last: the site reads the last position only (the logits).

    Returns:
        ``(sum of receivers, batch, seq, hidden)``.
    """
    n = len(blocks) // 2
    own, source = blocks[:n], blocks[n:]
    out = []
    for k, (w, chosen) in enumerate(zip(weights, picks)):
        if not chosen:
            continue
        senders = mx.concatenate([own[b][i:i + 1] for b, i in chosen], axis=0)
        ablated = mx.concatenate([source[b][i:i + 1] for b, i in chosen], axis=0)
        if last:
            senders, ablated = senders[:, :, -1:], ablated[:, :, -1:]
        diff = senders[:, layout.rows(k)] - _ablated(ablated, layout, 1).astype(senders.dtype)
        n, batch, seq, hidden = diff.shape
        delta = w.astype(mx.float32) @ diff.astype(mx.float32).reshape(n, -1)
        out.append(base[None, layout.rows(k)] + delta.reshape(-1, batch, seq, hidden).astype(base.dtype))
    return mx.concatenate(out, axis=0)


def replace_rows(base: mx.array, packed: mx.array, layout: Layout, where: Sequence[int]) -> mx.array:
    """A one-receiver site's input: ``base``, with variant ``k``'s rows taken from ``packed[where[k]]`` where
    ``where[k] >= 0``."""
    rows = [packed[at] if at >= 0 else base[layout.rows(k)] for k, at in enumerate(where)]
    return mx.concatenate(rows, axis=0)


def splice_projection(projected: mx.array, packed: mx.array, layout: Layout,
                      entries: Sequence[Tuple[Tuple[int, int], ...]], n_heads: int, *, norm: nn.Module,
                      linear: nn.Module) -> mx.array:
    """``projected`` (a q, k or v projection's output, ``(rows, seq, n_heads * head_dim)``) with, in variant
    ``k``'s rows, each head ``h`` of ``entries[k]`` (pairs ``(packed row, h)``) recomputed from its own input
    ``packed[row]`` (see :func:`.ops.head_projection`)."""
    blocks = []
    for k, pairs in enumerate(entries):
        own = projected[layout.rows(k)]
        if pairs:
            inputs = packed[mx.array([p for p, _ in pairs], dtype=mx.int32)]
            heads = [h for _, h in pairs]
            own = splice_heads(own, head_projection(inputs, heads, n_heads, norm=norm, linear=linear), heads, n_heads)
        blocks.append(own)
    return mx.concatenate(blocks, axis=0)
