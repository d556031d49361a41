"""Turn attention: how much each turn of a conversation attends to each earlier turn, per layer and head.

From the attention pattern (``model.layers[i].attn.pattern``, ``(batch, heads, query, key)``, rows summing
to 1), the mass from segment ``i`` to segment ``j`` is the mean over the query positions of ``i`` of the
total weight they give to the key positions of ``j``:

    mass[layer, head, i, j] = 1/|i| * sum_{q in i} sum_{k in j} pattern[layer][head, q, k]

Segments are the turns (their whole spans, or their contents with ``content_only``) and the generation
prompt when the conversation has one (the positions where the model starts its answer). Causal attention
makes ``mass[..., i, j]`` 0 for ``j > i``; the diagonal is a turn's attention to itself. What a query gives
to positions in no segment (the preamble: a BOS, a default system prompt; and with ``content_only`` the role
headers and end-of-turn markers) is ``outside``, so ``mass[..., i, :].sum() + outside[..., i] == 1``. A
segment with no positions (a message the template folds into the next) has NaN as a query row. The masses
are computed inside one traced forward (a ``(heads, segments, segments + 1)`` array per layer), so no
pattern is kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import mlx.core as mx
import numpy as np

from ..analysis.display import show_if_interactive
from ..analysis.serial import holds_model_lock
from ..analysis.sweep import saved_value
from ..analysis.validate import check_positive_int, require_attention, resolve_indices, resolve_layers
from ..tracing.proxy import apply
from ..views.saving import Saveable, attach
from .conversation import Conversation

if TYPE_CHECKING:
    from ..model import InterpretableModel

PathLike = Union[str, Path]
PROMPT = "generation prompt"


@dataclasses.dataclass
class TurnAttention(Saveable):
    """Attention mass between the segments of a conversation (see the module docstring). Saves and loads
    (``save(path)``, ``TurnAttention.load(path)``).

    Attributes:
        mass: ``(len(layers), heads, S, S)`` float64 numpy (computed in float32): the share of a query's
            attention, a fraction in [0, 1], from segment ``i`` (query) to segment ``j`` (key); NaN rows for
            empty segments.
        outside: ``(len(layers), heads, S)`` float64: the share from segment ``i`` to positions in no segment
            (``mass[..., i, :].sum(-1) + outside[..., i] == 1``).
        layers: the layer of each first-axis entry.
        labels: each segment's label (``"<index> <role>"`` for a turn, ``"generation prompt"``).
        spans: each segment's positions ``(start, stop)``.
        content_only: whether turn segments are the turns' contents.
    """

    kind = "turn_attention"

    mass: np.ndarray
    outside: np.ndarray
    layers: List[int]
    labels: List[str]
    spans: List[Tuple[int, int]]
    content_only: bool

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "TurnAttention":
        return cls(**dict(data, spans=[tuple(s) for s in data["spans"]]))

    @property
    def per_layer(self) -> np.ndarray:
        """``(len(layers), S, S)`` float64: the mass averaged over heads (fractions)."""
        return self.mass.mean(axis=1)

    @property
    def mean(self) -> np.ndarray:
        """``(S, S)`` float64: the mass averaged over layers and heads (fractions)."""
        return self.mass.mean(axis=(0, 1))

    def top(self, k: int = 5) -> List[Tuple[int, int, str, str, float]]:
        """The ``k`` heads giving the most mass from a segment to an earlier one: ``(layer, head, from, to,
        mass)`` (``from``/``to`` are segment labels, ``mass`` a fraction in [0, 1]), highest first (a segment's
        attention to itself, and to the preamble, are left out)."""

        earlier = np.tril(np.ones(self.mass.shape[-2:], dtype=bool), k=-1)
        values = np.where(earlier & ~np.isnan(self.mass), self.mass, -np.inf)
        order = np.argsort(-values, axis=None, kind="stable")[:check_positive_int(k, "k")]
        cells = zip(*np.unravel_index(order, values.shape))
        return [(self.layers[a], int(h), self.labels[i], self.labels[j], float(self.mass[a, h, i, j]))
                for a, h, i, j in cells if np.isfinite(values[a, h, i, j])]

    def plot(self, layer: Optional[int] = None, heads: Any = None, save_path: Optional[PathLike] = None, *,
             figsize: Optional[Tuple[float, float]] = None, cmap: str = "Blues", show: bool = False) -> Any:
        """Heatmap of the mass, query segments down and key segments across (``outside`` first).

        Args:
            layer: a layer read (None: the mean over layers and heads).
            heads: with ``layer``: a head, a list of heads (a grid), or None (the mean over heads).
            save_path: if given, write a PNG there.
            figsize: figure size in inches.
            cmap: sequential colormap.
            show: display it with an interactive matplotlib backend.

        Returns:
            The matplotlib Figure.
        """
        from ..plotting_attention import plot_attention_patterns

        data, head_labels, layer_label = self._panels(layer, heads)
        full = np.concatenate([data[1][..., None], data[0]], axis=-1)  # outside as the first key column
        fig = plot_attention_patterns(full, ["outside"] + self.labels, heads=head_labels, layer=layer_label,
                                      figsize=figsize, cmap=cmap, save_path=save_path,
                                      title="Attention mass between turns" if len(head_labels) == 1 else None)
        if show:
            show_if_interactive(fig)
        return fig

    def _panels(self, layer: Any, heads: Any) -> Tuple[Tuple[np.ndarray, np.ndarray], List[Any], Any]:
        """``((mass, outside) per panel, head labels, layer label)`` for :meth:`plot`."""
        if layer is None:
            if heads is not None:
                raise ValueError("heads: choose a layer to plot heads of (plot(layer=..., heads=...))")
            return (self.mass.mean(axis=(0, 1))[None], self.outside.mean(axis=(0, 1))[None]), ["mean"], "mean"
        if layer not in self.layers:
            raise ValueError(f"layer: {layer!r} was not read; the layers read are {self.layers}")
        at = self.layers.index(layer)
        mass, outside = self.mass[at], self.outside[at]
        if heads is None:
            return (mass.mean(axis=0)[None], outside.mean(axis=0)[None]), ["mean"], layer
        ids = resolve_indices(heads, mass.shape[0], arg="heads", unit="head", sort=False,
                              valid=f"layer {layer} has {mass.shape[0]} heads (0 to {mass.shape[0] - 1})")
        return (mass[ids], outside[ids]), ids, layer


def segments(conv: Conversation, content_only: bool) -> Tuple[List[str], List[Tuple[int, int]]]:
    """Labels and ``(start, stop)`` of a conversation's segments: its turns, then its generation prompt."""
    labels, spans = list(conv.labels), [(s.start, s.stop) for s in (
        t.content if content_only else t.span for t in conv.turns)]
    prompt = conv.generation_prompt
    if prompt.stop > prompt.start:
        labels.append(PROMPT)
        spans.append((prompt.start, prompt.stop))
    return labels, spans


def segment_matrices(spans: List[Tuple[int, int]], length: int) -> Tuple[mx.array, mx.array]:
    """``(S, T)`` query weights (row ``i``: ``1 / |i|`` on segment ``i``'s positions) and ``(T, S + 1)`` key
    indicators (column ``j``: segment ``j``'s positions; the last column: positions in no segment)."""
    queries = np.zeros((len(spans), length), dtype=np.float32)
    keys = np.zeros((length, len(spans) + 1), dtype=np.float32)
    for i, (start, stop) in enumerate(spans):
        if stop > start:
            queries[i, start:stop] = 1.0 / (stop - start)
        keys[start:stop, i] = 1.0
    keys[:, -1] = 1.0 - keys[:, :-1].sum(axis=1)
    return mx.array(queries), mx.array(keys)


def segment_mass(pattern: mx.array, queries: mx.array, keys: mx.array) -> mx.array:
    """``(heads, S, S + 1)`` from the ``(1, heads, T, T)`` pattern of one conversation (float32)."""
    return queries @ pattern[0].astype(mx.float32) @ keys


@holds_model_lock
def turn_attention(model: InterpretableModel, conv: Conversation, layers: Optional[List[int]] = None, *,
                   content_only: bool = False) -> TurnAttention:
    """Attention mass between the turns of ``conv`` at ``layers``, in one traced forward. See
    :meth:`InterpretableModel.turn_attention`."""
    require_attention(model, "turn_attention")
    if not isinstance(conv, Conversation):
        raise TypeError(f"conv: expected a Conversation (model.conversation([...])), got {type(conv).__name__}")
    layer_ids = resolve_layers(layers, len(model.layers))
    labels, spans = segments(conv, content_only)
    queries, keys = segment_matrices(spans, len(conv.tokens))
    with model.trace(conv, capture="saved"):
        handles = [apply(segment_mass, model.layers[layer].attn.pattern, queries, keys).save() for layer in layer_ids]
    values = mx.stack([saved_value(h) for h in handles])  # (layers, heads, S, S + 1)
    found = np.array(values, dtype=np.float64)
    empty = np.array([stop <= start for start, stop in spans])
    found[:, :, empty, :] = np.nan
    out = TurnAttention(found[..., :-1], found[..., -1], layer_ids, labels, spans, content_only)
    return attach(out, model, [conv.messages], dict(layers=layers, content_only=content_only))
