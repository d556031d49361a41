"""Attention patterns of a prompt, and per-head scores on repeated random tokens.

Both read ``model.layers[i].attn.pattern`` in one traced forward (the asked layers compute their attention
explicitly; see :mod:`mlxterp.adapters.attention`).

Head scores follow the usual definitions (as in TransformerLens' tutorials), on ``batch`` sequences of
``seq_len`` random tokens repeated once (after the tokenizer's BOS when it adds one): with ``n = seq_len``,

- **induction**: the mean weight a query in the repeated half gives to the token *after* its previous
  occurrence (key ``q - n + 1``);
- **duplicate-token**: the mean weight a query in the repeated half gives to its previous occurrence (``q - n``);
- **previous-token**: the mean weight every query gives to the token just before it (``q - 1``).

Scores are computed inside the trace (one small ``(3, heads)`` array per layer), so no pattern is kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import mlx.core as mx
import numpy as np

from ..tracing.proxy import apply
from ..views.page import Page, Viewable
from ..views.saving import Saveable, attach
from .display import show_if_interactive
from .validate import (
    check_positive_int,
    require_attention,
    resolve_indices,
    resolve_layers,
    single_prompt,
    token_labels,
)

if TYPE_CHECKING:
    from ..model import InterpretableModel

PathLike = Union[str, Path]
KINDS = ("induction", "previous_token", "duplicate_token")


@dataclasses.dataclass
class AttentionPatterns(Saveable, Viewable):
    """Attention patterns of one prompt.

    Saves and loads (``save(path)``, ``AttentionPatterns.load(path)``); ``save_html(path, layer=None,
    head=0)`` writes the interactive view (see :func:`mlxterp.views.attention.attention_page`).

    Attributes:
        patterns: ``{layer: (heads, seq, seq) float32 numpy array}``: row ``q`` holds query ``q``'s softmax
            weights over the keys (fractions summing to 1 over keys ``0..q``).
        tokens: the prompt's tokens (as text; ids without a tokenizer).
        layers: the layers read.
    """

    kind = "attention_patterns"

    patterns: Dict[int, np.ndarray]
    tokens: List[str]
    layers: List[int]

    def _page(self, **options: Any) -> Page:
        from ..views.attention import attention_page

        return attention_page(self, **options)

    def __getitem__(self, layer: int) -> np.ndarray:
        return self.patterns[layer]

    def plot(self, layer: int, heads: Any = None, save_path: Optional[PathLike] = None, *,
             figsize: Optional[Tuple[float, float]] = None, cmap: str = "Blues", show: bool = False) -> Any:
        """Heatmap of ``layer``'s pattern for one head (an int) or a grid of heads (a list; None: all).

        Returns:
            The matplotlib Figure (shown only with ``show=True`` and an interactive backend).
        """
        from ..plotting_attention import plot_attention_patterns

        if layer not in self.patterns:
            raise ValueError(f"layer: {layer!r} was not read; the layers read are {self.layers}")
        n_heads = self.patterns[layer].shape[0]
        head_ids = resolve_indices(heads, n_heads, arg="heads", unit="head", sort=False,
                                   valid=f"layer {layer} has {n_heads} heads (0 to {n_heads - 1})")
        fig = plot_attention_patterns(self.patterns[layer][head_ids], self.tokens, heads=head_ids, layer=layer,
                                      figsize=figsize, cmap=cmap, save_path=save_path)
        if show:
            show_if_interactive(fig)
        return fig


def attention_patterns(model: InterpretableModel, text: Any, layers: Optional[List[int]] = None) -> AttentionPatterns:
    """Every head's attention pattern of one prompt at ``layers`` (None: all), in one traced forward.
    See :meth:`mlxterp.analysis.methods.AnalysisMixin.attention_patterns`."""
    require_attention(model, "attention_patterns")
    tokens = single_prompt(model, text, "text")
    layer_ids = resolve_layers(layers, len(model.layers))
    with model.trace(tokens, capture="saved"):
        handles = [model.layers[layer].attn.pattern.save() for layer in layer_ids]
    values = [h if isinstance(h, mx.array) else h.value for h in handles]
    mx.eval(values)
    patterns = {layer: np.array(v[0].astype(mx.float32)) for layer, v in zip(layer_ids, values)}
    out = AttentionPatterns(patterns, token_labels(model, tokens[0].tolist()), layer_ids)
    return attach(out, model, [text], {"layers": layers})


@dataclasses.dataclass
class HeadScores(Saveable):
    """Per-(layer, head) attention scores on repeated random tokens (see the module docstring).

    Attributes:
        induction, previous_token, duplicate_token: ``(len(layers), heads)`` float32 numpy arrays of mean
            attention weights, in [0, 1].
        layers: the layer of each row.
        tokens: the ``(batch, length)`` int32 numpy token ids the scores were measured on (``length`` is
            ``2 * seq_len``, plus 1 for a BOS).
    """

    kind = "head_scores"

    induction: np.ndarray
    previous_token: np.ndarray
    duplicate_token: np.ndarray
    layers: List[int]
    tokens: np.ndarray

    def as_dict(self) -> Dict[str, np.ndarray]:
        """``{kind: (len(layers), heads) float32 array}`` for every kind."""

        return {kind: getattr(self, kind) for kind in KINDS}

    def top(self, kind: str = "induction", k: int = 5) -> List[Tuple[int, int, float]]:
        """The ``k`` highest-scoring heads of ``kind``: ``(layer, head, score)``, best first."""
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        grid = getattr(self, kind)
        order = np.argsort(-grid, axis=None)[:check_positive_int(k, "k")]
        return [(self.layers[i], int(j), float(grid[i, j])) for i, j in zip(*np.unravel_index(order, grid.shape))]

    def plot(self, save_path: Optional[PathLike] = None, *, kinds: Tuple[str, ...] = KINDS,
             figsize: Optional[Tuple[float, float]] = None, cmap: str = "viridis", show: bool = False) -> Any:
        """One heatmap per score kind, layers by heads. Returns the matplotlib Figure."""
        from ..plotting_attention import plot_head_scores

        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"kinds: expected a non-empty tuple of {KINDS}, got {kinds!r}")
        fig = plot_head_scores({k: getattr(self, k) for k in kinds}, layers=self.layers, figsize=figsize, cmap=cmap,
                               save_path=save_path)
        if show:
            show_if_interactive(fig)
        return fig


def repeated_random_tokens(model: InterpretableModel, seq_len: int, batch: int, seed: int = 0,
                           token_range: Optional[Tuple[int, int]] = None) -> Tuple[mx.array, int]:
    """``batch`` rows of ``seq_len`` random ids repeated once, after the BOS the tokenizer adds (if any), and
    where the first copy starts (0 or 1). Ids are drawn from ``token_range`` (default: the middle of the
    vocabulary, ``[vocab // 20, vocab // 2)``, away from special tokens at its start)."""
    vocab = model._embedding_rows or model.vocab_size
    if vocab is None:
        raise ValueError("head scores need the vocabulary size: the model has no identifiable token embedding")
    low, high = token_range or (vocab // 20, max(vocab // 2, vocab // 20 + 1))
    if not 0 <= low < high <= vocab:
        raise ValueError(f"token_range: expected 0 <= low < high <= {vocab} (the vocabulary), got {token_range!r}")
    random = mx.random.randint(low, high, (batch, seq_len), key=mx.random.key(seed)).astype(mx.int32)
    rows = mx.concatenate([random, random], axis=1)
    bos = _added_bos(model)
    if bos is None:
        return rows, 0
    return mx.concatenate([mx.full((batch, 1), bos, dtype=mx.int32), rows], axis=1), 1


def _added_bos(model: InterpretableModel) -> Optional[int]:
    """The BOS id the tokenizer puts before text, or None (no tokenizer, or it adds none)."""
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    if not isinstance(bos, int):
        return None
    return bos if model.encode("a")[:1] == [bos] else None


def diagonal_scores(pattern: mx.array, start: int, n: int) -> mx.array:
    """``(3, heads)``: induction, previous-token and duplicate-token scores from ``(batch, heads, T, T)``
    patterns of sequences whose two copies of ``n`` tokens start at ``start`` and ``start + n``."""
    pattern = pattern.astype(mx.float32)

    def mean_diagonal(offset: int, first: int, count: int) -> mx.array:
        diag = mx.diagonal(pattern, offset=-offset, axis1=2, axis2=3)  # diag[..., i] = pattern[..., i + offset, i]
        return diag[..., first:first + count].mean(axis=(0, 2))

    induction = mean_diagonal(n - 1, start + 1, n)  # queries start+n .. start+2n-1, keys q - n + 1
    previous = mean_diagonal(1, start, 2 * n - 1)  # queries start+1 .. start+2n-1, keys q - 1
    duplicate = mean_diagonal(n, start, n)  # queries start+n .. start+2n-1, keys q - n
    return mx.stack([induction, previous, duplicate])


def head_scores(model: InterpretableModel, seq_len: int = 50, batch: int = 4, layers: Optional[List[int]] = None, seed: int = 0,
                token_range: Optional[Tuple[int, int]] = None) -> HeadScores:
    """Induction, previous-token and duplicate-token scores of every head, in one batched forward.
    See :meth:`mlxterp.analysis.methods.AnalysisMixin.head_scores`."""
    require_attention(model, "head_scores")
    seq_len = check_positive_int(seq_len, "seq_len")
    if seq_len < 2:
        raise ValueError(f"seq_len: expected at least 2 tokens per copy, got {seq_len}")
    batch = check_positive_int(batch, "batch")
    layer_ids = resolve_layers(layers, len(model.layers))
    tokens, start = repeated_random_tokens(model, seq_len, batch, seed, token_range)
    with model.trace(tokens, capture="saved"):
        handles = [apply(diagonal_scores, model.layers[layer].attn.pattern, start, seq_len).save()
                   for layer in layer_ids]
    values = [h if isinstance(h, mx.array) else h.value for h in handles]
    stacked = np.array(mx.stack(values))  # (layers, 3, heads)
    out = HeadScores(stacked[:, 0], stacked[:, 1], stacked[:, 2], layer_ids, np.array(tokens))
    return attach(out, model, [], {"seq_len": seq_len, "batch": batch, "layers": layers, "seed": seed,
                                   "token_range": token_range})
