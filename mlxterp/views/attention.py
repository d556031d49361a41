"""The attention-pattern view: a layer x head grid of thumbnails, and one head's pattern with the prompt's
tokens on both axes (hover: query token, key token, weight).

Weights travel rounded to ``digits`` decimals, bit-packed (:mod:`.packing`); for a causal model only the
lower triangle (keys up to the query) is stored, since every later key has weight 0: a 30-layer x 9-head x
128-token result makes a page of about 4 MB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from .packing import pack
from .page import Page, origin_lines

if TYPE_CHECKING:
    from ..analysis.patterns import AttentionPatterns


def attention_page(result: AttentionPatterns, *, layer: Optional[int] = None, head: int = 0,
                   digits: int = 3) -> Page:
    """The page of an :class:`~mlxterp.analysis.patterns.AttentionPatterns`.

    Args:
        result: the patterns.
        layer: the layer shown first (default: the first read).
        head: the head shown first.
        digits: decimals of the weights shown on hover (1 to 4).

    Raises:
        ValueError: ``layer`` was not read, ``head`` is out of range, or ``digits`` is not 1 to 4.
    """
    if not (isinstance(digits, int) and 1 <= digits <= 4):
        raise ValueError(f"digits: expected an int from 1 to 4 (decimals shown), got {digits!r}")
    layers = list(result.layers)
    first = layers[0] if layer is None else layer
    if first not in layers:
        raise ValueError(f"layer: {first!r} was not read; the layers read are {layers}")
    n_heads = [int(result.patterns[lay].shape[0]) for lay in layers]
    if not 0 <= head < n_heads[layers.index(first)]:
        raise ValueError(f"head: expected 0 to {n_heads[layers.index(first)] - 1} (layer {first}), got {head!r}")
    stack = [np.asarray(result.patterns[lay], dtype=np.float32) for lay in layers]
    causal = all(np.all(np.triu(p, k=1) == 0) for p in stack)
    values = np.concatenate([_cells(p, causal) for p in stack])
    seq = len(result.tokens)
    header = origin_lines(result.provenance) + [
        ("Layers", f"{len(layers)} ({_span(layers)}), {max(n_heads)} heads, {seq} tokens"),
        ("Weights", f"to {digits} decimals" + (" (causal: keys after the query are masked)" if causal else ""))]
    return Page("Attention patterns", header, "attention",
                {"tokens": list(result.tokens), "layers": layers, "heads": n_heads, "causal": bool(causal),
                 "values": pack(values, digits), "selected": [layers.index(first), int(head)]},
                height=min(900, 200 + max(14 * seq, 44 * len(layers))))


def _cells(pattern: np.ndarray, causal: bool) -> np.ndarray:
    """A ``(heads, T, T)`` pattern's cells in the page's order: head, query, key (keys up to the query
    when ``causal``)."""
    if not causal:
        return pattern.reshape(-1)
    rows, cols = np.tril_indices(pattern.shape[-1])  # row-major: query 0's key 0, query 1's keys 0-1, ...
    return pattern[:, rows, cols].reshape(-1)


def _span(layers: list) -> str:
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1 \
        else ", ".join(str(x) for x in layers)
