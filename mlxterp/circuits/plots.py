"""Figures of circuits: the best edges drawn as a graph, and the faithfulness curve (headless matplotlib
figures, as :mod:`mlxterp.plotting` makes them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

import numpy as np

from ..plotting import finish_figure, new_axes

if TYPE_CHECKING:
    from .edges import EdgeScores
    from .faithfulness import FaithfulnessCurve

PathLike = Union[str, Path]


def plot_edges(scores: EdgeScores, n_edges: int, *, figsize: Tuple[float, float] = (10, 8),
               save_path: Optional[PathLike] = None, title: Optional[str] = None) -> Any:
    """The ``n_edges`` best edges of ``scores``: red positive, blue negative, line width by ``|score|``."""
    g = scores.graph
    top = scores.top(n_edges)
    fig, ax = new_axes(figsize)
    limit = max((abs(s) for _, _, s in top), default=1.0) or 1.0
    for sender, receiver, score in top:
        (x0, y0), (x1, y1) = g.position(sender), g.position(receiver, receiver=True)
        ax.plot([x0, x1], [y0, y1], color="tab:red" if score > 0 else "tab:blue", alpha=0.3 + 0.7 * abs(score) / limit,
                linewidth=0.5 + 3.0 * abs(score) / limit)
    nodes = {(name, end) for s, r, _ in top for name, end in ((s, False), (r, True))}
    if nodes:
        xy = np.array([g.position(n, receiver=end) for n, end in sorted(nodes)])
        ax.scatter(xy[:, 0], xy[:, 1], s=12, color="black", zorder=3)
    ax.set_xticks([-1] + list(range(g.n_heads)) + [g.n_heads + 1])
    ax.set_xticklabels(["embed / logits"] + [f"H{h}" for h in range(g.n_heads)] + ["MLP"])
    ax.set_ylabel("Layer")
    ax.set_ylim(-1.5, g.n_layers + 0.5)
    ax.set_title(title or f"Top {n_edges} edges")
    return finish_figure(fig, save_path)


def plot_faithfulness(curve: FaithfulnessCurve, *, figsize: Tuple[float, float] = (8, 5),
                      save_path: Optional[PathLike] = None, title: Optional[str] = None) -> Any:
    """Faithfulness against the number of edges or nodes (log scale when every size is positive)."""
    fig, ax = new_axes(figsize)
    ax.plot(curve.sizes, curve.faithfulness, marker="o")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    if min(curve.sizes) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(f"{curve.unit.capitalize()} in the circuit")
    ax.set_ylabel("Faithfulness")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Circuit faithfulness")
    return finish_figure(fig, save_path)
