"""Headless matplotlib plots of attention: patterns (tokens on both axes, one head or a grid of heads)
and per-head scores (layers x heads). Same conventions as :mod:`mlxterp.plotting`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .plotting import finish_figure, _get_cmap, _set_ticks, format_token, require_matplotlib

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure


def _figure(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A display-free Figure (Agg canvas) with a ``rows x cols`` array of Axes."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(rows, cols)


def plot_attention_patterns(
    patterns: Any,
    tokens: Sequence[str],
    *,
    heads: Sequence[int],
    layer: int,
    figsize: tuple[float, float] | None = None,
    cmap: str | Colormap = "Blues",
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Attention patterns of some heads of one layer: query tokens down, key tokens across.

    Args:
        patterns: ``(len(heads), q, k)`` array of attention weights (rows sum to 1).
        tokens: the prompt's tokens (labels of both axes; ``k`` of them).
        heads: the head index of each pattern (one head: one plot; several: a grid).
        layer: the layer, for the titles.
        figsize: figure size in inches (default grows with the number of heads).
        cmap: sequential colormap (weights run from 0 to 1).
        title: figure title; a default is used when None.
        save_path: if given, write a PNG there.

    Returns:
        The matplotlib Figure.
    """
    data = np.asarray(patterns, dtype=np.float64)
    if data.ndim != 3 or data.shape[0] != len(heads) or data.shape[2] != len(tokens):
        raise ValueError(f"patterns: expected shape ({len(heads)}, queries, {len(tokens)}) for {len(heads)} heads "
                         f"and {len(tokens)} tokens, got {data.shape}")
    cols = math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    fig, axes = _figure(rows, cols, figsize or (4.5 * cols + 1, 4.2 * rows))
    labels = [format_token(t, 10) for t in tokens]
    image = None
    for ax, head, pattern in zip(axes.flat, heads, data):
        image = ax.imshow(pattern, cmap=_get_cmap(cmap), vmin=0.0, vmax=1.0, aspect="auto")
        _set_ticks(ax, "x", labels, rotate=True)
        _set_ticks(ax, "y", labels[-pattern.shape[0]:])
        ax.set_title(f"layer {layer}, head {head}")
    for ax in list(axes.flat)[len(heads):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("query")
    axes[-1, 0].set_xlabel("key")
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    if title is not None or len(heads) > 1:
        fig.suptitle(title or f"Attention patterns, layer {layer}")
    return finish_figure(fig, save_path)


def plot_head_scores(
    scores: Mapping[str, Any],
    *,
    layers: Sequence[int],
    figsize: tuple[float, float] | None = None,
    cmap: str | Colormap = "viridis",
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """One heatmap per score kind (induction, previous-token, ...), layers as rows, heads as columns.

    Args:
        scores: ``{kind: (len(layers), heads) array}`` of scores in [0, 1].
        layers: the layer of each row.
        figsize: figure size in inches (default grows with the number of kinds).
        cmap: sequential colormap.
        title: figure title; a default is used when None.
        save_path: if given, write a PNG there.

    Returns:
        The matplotlib Figure.
    """
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(f"scores: expected a non-empty dict {{kind: (layers, heads) array}}, got {scores!r}")
    grids = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    for kind, grid in grids.items():
        if grid.ndim != 2 or grid.shape[0] != len(layers):
            raise ValueError(f"scores[{kind!r}]: expected shape ({len(layers)}, heads), got {grid.shape}")
    fig, axes = _figure(1, len(grids), figsize or (4.5 * len(grids) + 1, max(4.0, 0.25 * len(layers) + 2)))
    image = None
    for ax, (kind, grid) in zip(axes.flat, grids.items()):
        image = ax.imshow(grid, cmap=_get_cmap(cmap), vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
        _set_ticks(ax, "x", [str(h) for h in range(grid.shape[1])])
        _set_ticks(ax, "y", [str(layer) for layer in layers])
        ax.set_title(kind.replace("_", " "))
        ax.set_xlabel("head")
    axes[0, 0].set_ylabel("layer")
    fig.colorbar(image, ax=axes, label="score", shrink=0.8)
    fig.suptitle(title or "Attention head scores")
    return finish_figure(fig, save_path)
