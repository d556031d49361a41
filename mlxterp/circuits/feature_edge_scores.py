"""The result of :func:`mlxterp.circuits.feature_edges`: edge scores from every node of an upstream dictionary
into chosen nodes of a downstream one. Edges are ranked by absolute score, ties broken by the downstream
node's order, then the upstream position and feature (an upstream error node after its features)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from ..views.saving import Saveable
from .feature_nodes import ERROR, Node

PathLike = Union[str, Path]
Edge = Tuple[Node, Node, float]  # (upstream node, downstream node, score)


@dataclasses.dataclass
class FeatureEdges(Saveable):
    """Edge scores between the nodes of two dictionaries (see :func:`mlxterp.circuits.feature_edges`). Saves and
    loads (``save(path)``, ``FeatureEdges.load(path)``).

    Attributes:
        upstream: the upstream dictionary's label.
        downstream: the downstream dictionary's label.
        tokens: the first clean prompt's tokens as text.
        nodes: the chosen downstream nodes ``(position, feature or "error")``, best node score first.
        node_scores: ``(top,)`` float32: each downstream node's attribution score (as
            :func:`mlxterp.circuits.feature_attribution` gives it).
        features: ``(top, seq, d_sae)`` float32: ``features[n, t, f]`` is the edge from the upstream feature ``f``
            at position ``t`` into downstream node ``nodes[n]``, in the metric's units (averaged over prompts).
        errors: ``(top, seq)`` float32: the edges from the upstream error node at each position.
        mode: ``"patching"`` or ``"ablation"``.
        metric: the metric's label.
    """

    kind = "feature_edges"

    upstream: str
    downstream: str
    tokens: List[str]
    nodes: List[Tuple[int, Union[int, str]]]
    node_scores: np.ndarray
    features: np.ndarray
    errors: np.ndarray
    mode: str
    metric: str

    def __post_init__(self) -> None:
        self.nodes = [(int(t), f if f == ERROR else int(f)) for t, f in self.nodes]
        self.node_scores = np.asarray(self.node_scores, dtype=np.float32)
        self.features = np.asarray(self.features, dtype=np.float32)
        self.errors = np.asarray(self.errors, dtype=np.float32)
        top, seq = len(self.nodes), len(self.tokens)
        if self.features.ndim != 3 or self.features.shape[:2] != (top, seq) or self.errors.shape != (top, seq):
            raise ValueError(f"FeatureEdges: expected features (top, seq, d_sae) and errors (top, seq) with top = "
                             f"{top} nodes and seq = {seq} tokens, got {self.features.shape} and {self.errors.shape}")

    def _flat(self) -> np.ndarray:
        """Every edge, per downstream node its ``(seq, d_sae)`` feature edges row-major then its ``seq`` error
        edges."""
        return np.concatenate([self.features.reshape(len(self.nodes), -1), self.errors], axis=1).ravel()

    def edge(self, index: int) -> Edge:
        """The edge at flat index ``index``: per downstream node (in :attr:`nodes` order) its ``seq * d_sae``
        feature edges row-major, then its ``seq`` error edges."""
        seq, width = self.features.shape[1:]
        n, i = divmod(int(index), seq * (width + 1))
        t, f = divmod(i, width) if i < seq * width else (i - seq * width, ERROR)
        score = float(self.features[n, t, f] if f != ERROR else self.errors[n, t])
        return (self.upstream, int(t), f), (self.downstream,) + self.nodes[n], score

    def top(self, k: int = 20) -> List[Edge]:
        """The ``k`` edges of largest absolute score: ``((upstream, position, feature or "error"), (downstream,
        position, feature or "error"), score)``, largest first."""
        return [self.edge(int(i)) for i in np.argsort(-np.abs(self._flat()), kind="stable")[:k]]

    def plot(self, k: int = 20, save_path: Optional[PathLike] = None, *,
             figsize: Tuple[float, float] = (10, 6)) -> Any:
        """Bars of the ``k`` best edges (``feature @ position -> feature @ position``)."""
        from ..features import plots

        top = self.top(k)
        fig, axes = plots.figure(figsize, 1, 1)
        plots.bars(axes[0][0], [f"{u[2]} @ {u[1]}:{self.tokens[u[1]]!r} -> {d[2]} @ {d[1]}:{self.tokens[d[1]]!r}"
                                for u, d, _ in top], [s for *_, s in top],
                   f"top edges {self.upstream} -> {self.downstream} ({self.mode}, {self.metric})",
                   colors=["#4c72b0" if s >= 0 else "#c44e52" for *_, s in top])
        return plots.finish(fig, save_path)

    def __repr__(self) -> str:
        head = (f"FeatureEdges({self.mode}, {self.upstream} -> {self.downstream}, {len(self.nodes)} downstream "
                f"nodes, metric {self.metric})")
        rows = [f"  {u[1]:>3} {u[2]!s:>6} -> {d[1]:>3} {d[2]!s:>6}: {s:+.4g}" for u, d, s in self.top(5)]
        return "\n".join([head] + rows)
