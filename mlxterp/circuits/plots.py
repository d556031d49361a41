"""Figures of circuits: the best edges drawn as a graph, and the faithfulness curve (headless matplotlib
figures, as :mod:`mlxterp.plotting` makes them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

import numpy as np

from ..plotting import _finish, _new_axes

if TYPE_CHECKING:
    from .edges import EdgeScores
    from .faithfulness import FaithfulnessCurve

PathLike = Union[str, Path]


def _position(name: str, n_heads: int, n_layers: int) -> Tuple[float, float]:
    """Where a node sits: x by head (the MLP right of the heads), y by layer (receivers just below their
    layer's senders; the embedding at the bottom, the logits at the top)."""
    if name == "embed":
        return n_heads / 2, -1.0
    if name == "logits":
        return n_heads / 2, float(n_layers)
    parts = name.split(".")
    layer = int(parts[1])
    if parts[2] == "mlp":
        return float(n_heads + 1), layer + 0.5
    if len(parts) == 3:  # a layer's whole attention (receivers="layers")
        return n_heads / 2, layer - 0.3
    head = int(parts[4])
    if len(parts) == 5:  # a head's output
        return float(head), float(layer)
    return head + {"q": -0.25, "k": 0.0, "v": 0.25}[parts[5]], layer - 0.3


def plot_edges(scores: EdgeScores, n_edges: int, *, figsize: Tuple[float, float] = (10, 8),
               save_path: Optional[PathLike] = None, title: Optional[str] = None) -> Any:
    """The ``n_edges`` best edges of ``scores``: red positive, blue negative, line width by ``|score|``."""
    g = scores.graph
    top = scores.top(n_edges)
    fig, ax = _new_axes(figsize)
    limit = max((abs(s) for _, _, s in top), default=1.0) or 1.0
    for sender, receiver, score in top:
        (x0, y0), (x1, y1) = _position(sender, g.n_heads, g.n_layers), _position(receiver, g.n_heads, g.n_layers)
        ax.plot([x0, x1], [y0, y1], color="tab:red" if score > 0 else "tab:blue", alpha=0.3 + 0.7 * abs(score) / limit,
                linewidth=0.5 + 3.0 * abs(score) / limit)
    nodes = {name for s, r, _ in top for name in (s, r)}
    if nodes:
        xy = np.array([_position(n, g.n_heads, g.n_layers) for n in sorted(nodes)])
        ax.scatter(xy[:, 0], xy[:, 1], s=12, color="black", zorder=3)
    ax.set_xticks(list(range(g.n_heads)) + [g.n_heads + 1])
    ax.set_xticklabels([f"H{h}" for h in range(g.n_heads)] + ["MLP"])
    ax.set_ylabel("Layer")
    ax.set_ylim(-1.5, g.n_layers + 0.5)
    ax.set_title(title or f"Top {n_edges} edges")
    return _finish(fig, save_path)


def plot_faithfulness(curve: FaithfulnessCurve, *, figsize: Tuple[float, float] = (8, 5),
                      save_path: Optional[PathLike] = None, title: Optional[str] = None) -> Any:
    """Faithfulness against the number of edges (log scale when every size is positive)."""
    fig, ax = _new_axes(figsize)
    ax.plot(curve.sizes, curve.faithfulness, marker="o")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    if min(curve.sizes) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("Edges in the circuit")
    ax.set_ylabel("Faithfulness")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Circuit faithfulness")
    return _finish(fig, save_path)
