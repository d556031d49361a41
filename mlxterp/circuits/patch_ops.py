"""Pure MLX functions of the patched forward (applied inside its trace; see :mod:`.patching`).

The forward's rows are the source rows (the corrupted prompts, ``sources`` of them) followed by ``K``
variants of the clean prompts (``batch`` rows each). A variant either *keeps* edges (a circuit: every
receiver reads the ablated input plus its kept edges' differences) or *patches* them (every receiver reads
its own input, with the patched edges' differences taken away).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn

from .ops import head_projection, splice_heads


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the rows of a patched forward are laid out (static: part of the program's structure).

    Attributes:
        sources: source rows first (the corrupted prompts).
        batch: rows per variant (the clean prompts).
        kept: per variant, whether it keeps edges (a circuit) or patches them.
        mean: ablated values are the mean over the source rows (else source row ``i`` for clean row ``i``).
    """

    sources: int
    batch: int
    kept: Tuple[bool, ...]
    mean: bool

    @property
    def variants(self) -> int:
        return len(self.kept)


def _ablated(source: mx.array, layout: Layout, axis: int) -> mx.array:
    """The ablated value for each clean row: the source rows, or their mean (broadcast over ``batch`` rows)."""
    if not layout.mean:
        return source
    mean = source.mean(axis=axis, keepdims=True)
    shape = list(mean.shape)
    shape[axis] = layout.batch
    return mx.broadcast_to(mean, shape)


def base_rows(x: mx.array, layout: Layout) -> mx.array:
    """The input every receiver of a site starts from, per row: the source rows' own, then for each variant the
    ablated value (a circuit) or the variant's own (patching). ``x``: ``(rows, seq, hidden)``."""
    source, rest = x[:layout.sources], x[layout.sources:]
    ablated = _ablated(source, layout, 0).astype(x.dtype)
    b = layout.batch
    rows = [source] + [ablated if kept else rest[k * b:(k + 1) * b] for k, kept in enumerate(layout.kept)]
    return mx.concatenate(rows, axis=0)


def special_inputs(base: mx.array, weights: mx.array, *blocks: mx.array, layout: Layout,
                   picks: Sequence[Tuple[int, int]], last: bool) -> mx.array:
    """The inputs of a site's receivers that have edges: ``base + sum_u weights[k, r, u] * (z_u - z_u')`` in
    variant ``k``'s rows, with ``z_u`` the sender's output in that row and ``z_u'`` its ablated value.

    Args:
        base: ``(rows, seq, hidden)`` from :func:`base_rows`.
        weights: ``(variants, receivers, senders)``: +1 for a kept edge, -1 for a patched one, 0 for none.
        blocks: sender outputs ``(n, rows, seq_all, hidden)`` (a layer's heads, an MLP, the embedding).
        layout: the rows' :class:`Layout`.
        picks: ``(block, index)`` of each involved sender, in ``weights``' order.
        last: the site reads the last position only (the logits).

    Returns:
        ``(receivers, rows, seq, hidden)``; source rows get ``base``.
    """
    senders = mx.concatenate([blocks[b][i:i + 1] for b, i in picks], axis=0)
    if last:
        senders = senders[:, :, -1:]
    n, _, seq, hidden = senders.shape
    k, b = layout.variants, layout.batch
    ablated = _ablated(senders[:, :layout.sources], layout, 1)
    diff = senders[:, layout.sources:].reshape(n, k, b, seq, hidden) - ablated[:, None]
    diff = diff.astype(mx.float32).transpose(1, 0, 2, 3, 4).reshape(k, n, -1)
    delta = (weights.astype(mx.float32) @ diff).reshape(k, -1, b, seq, hidden)
    receivers = delta.shape[1]
    delta = delta.transpose(1, 0, 2, 3, 4).reshape(receivers, k * b, seq, hidden)
    delta = mx.concatenate([mx.zeros((receivers, layout.sources, seq, hidden), mx.float32), delta], axis=1)
    return base[None] + delta.astype(base.dtype)


def splice_projection(projected: mx.array, inputs: mx.array, rows: Sequence[int], heads: Sequence[int],
                      n_heads: int, *, norm: nn.Module, linear: nn.Module) -> mx.array:
    """``projected`` (a q, k or v projection's output) with each head in ``heads`` recomputed from its own
    input ``inputs[rows[i]]`` (see :func:`.ops.head_projection`)."""
    own = head_projection(inputs[mx.array(list(rows), dtype=mx.int32)], heads, n_heads, norm=norm, linear=linear)
    return splice_heads(projected, own, heads, n_heads)


def pick(inputs: mx.array, row: int) -> mx.array:
    """``inputs[row]``."""
    return inputs[row]
