"""Edge scores and circuits: matrices over a :class:`~.nodes.CircuitGraph`'s receivers x senders.

An :class:`EdgeScores` holds one score per edge (entries where no edge exists are 0); a :class:`Circuit` is
a set of edges (a boolean matrix of the same shape). Edges are ranked by absolute score, ties broken by
the graph's order (earlier receiver, then earlier sender), so a ranking is deterministic. Both save and load
(``save(path)``, ``load(path)``, see :mod:`mlxterp.views`); edge scores draw themselves as a graph
(``save_html(path)``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..views.page import Page, Viewable
from ..views.saving import Saveable, derive
from .nodes import CircuitGraph, Edge, canonical

PathLike = Union[str, Path]


@dataclasses.dataclass
class Circuit(Saveable):
    """A set of edges of a model's circuit graph.

    Attributes:
        graph: the :class:`~.nodes.CircuitGraph` (its ``receivers`` granularity included).
        mask: ``(n_receivers, n_senders)`` bool: which edges are in the circuit.
    """

    kind = "circuit"

    graph: CircuitGraph
    mask: np.ndarray

    def __post_init__(self) -> None:
        shape = (self.graph.n_receivers, self.graph.n_senders)
        mask = np.asarray(self.mask)
        if mask.shape != shape or mask.dtype != bool:
            raise ValueError(f"mask: expected a bool array of shape {shape} (receivers x senders), got "
                             f"{mask.dtype} {mask.shape}")
        if (mask & ~self.graph.valid()).any():
            raise ValueError("mask: marks pairs that are no edge (a sender that runs after its receiver); "
                             "graph.valid() says which pairs are edges")
        self.mask = mask

    @classmethod
    def from_edges(cls, graph: CircuitGraph, edges: Iterable[Sequence[str]], arg: str = "edges") -> "Circuit":
        """The circuit of ``(sender, receiver)`` name pairs (checked: a ValueError names the first bad one)."""
        rows, cols = graph.edge_index(list(edges), arg)
        mask = np.zeros((graph.n_receivers, graph.n_senders), dtype=bool)
        mask[rows, cols] = True
        return cls(graph, mask)

    @property
    def edges(self) -> List[Edge]:
        """``(sender, receiver)`` pairs, in the graph's order."""
        senders, receivers = self.graph.senders, self.graph.receivers
        return [(senders[u], receivers[r]) for r, u in zip(*np.nonzero(self.mask))]

    @property
    def nodes(self) -> List[str]:
        """Senders and receivers with at least one edge in the circuit (senders first, each in order)."""
        senders = [self.graph.senders[u] for u in np.flatnonzero(self.mask.any(axis=0))]
        return senders + [self.graph.receivers[r] for r in np.flatnonzero(self.mask.any(axis=1))]

    def __len__(self) -> int:
        return int(self.mask.sum())

    def __eq__(self, other: object) -> bool:
        """The same graph and the same edges."""
        if not isinstance(other, Circuit):
            return NotImplemented
        return self.graph == other.graph and bool(np.array_equal(self.mask, other.mask))

    __hash__ = None  # type: ignore[assignment]  (mutable, as a dataclass that compares fields)

    def __contains__(self, edge: object) -> bool:
        if not isinstance(edge, tuple) or len(edge) != 2:
            return False
        senders, receivers = self.graph.senders, self.graph.receivers
        u, r = canonical(edge[0]), canonical(edge[1])
        return u in senders and r in receivers and bool(self.mask[receivers.index(r), senders.index(u)])

    def __repr__(self) -> str:
        return f"Circuit({len(self)} edges of {self.graph.n_edges}, receivers={self.graph.granularity!r})"

    def _record_fields(self) -> Dict[str, Any]:
        return {"graph": self.graph.as_record(), "mask": self.mask}

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "Circuit":
        return cls(CircuitGraph.from_record(data["graph"]), data["mask"])


@dataclasses.dataclass
class EdgeScores(Saveable, Viewable):
    """Attribution scores of every edge (see :func:`mlxterp.circuits.attribution.edge_attribution`).

    Saves and loads (``save(path)``, ``EdgeScores.load(path)``); ``save_html(path)`` draws the best edges as a
    graph laid out by layer (a slider sets how many).

    Attributes:
        graph: the :class:`~.nodes.CircuitGraph`.
        scores: ``(n_receivers, n_senders)`` float64 numpy; ``scores[r, u]`` estimates how much the metric
            changes (in the metric's units: logits for ``logit_diff``, nats for ``logprob``) when edge
            ``(senders[u], receivers[r])`` takes its clean value in the corrupted run (0 where no edge exists).
        method: ``"eap"``, ``"eap-ig"`` or ``"eap-ig-activations"``.
        steps: points of the integrated gradients (1 for EAP).
        metric: the metric's label.
        clean: the metric on the clean prompts (mean over rows; a Python float).
        corrupted: the metric on the corrupted prompts (mean over rows).
    """

    kind = "edge_scores"

    graph: CircuitGraph
    scores: np.ndarray
    method: str
    steps: int
    metric: str
    clean: float
    corrupted: float
    _ranking: Optional[np.ndarray] = dataclasses.field(default=None, repr=False, compare=False)

    def _record_fields(self) -> Dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_ranking"}
        return dict(fields, graph=self.graph.as_record())

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "EdgeScores":
        return cls(**dict(data, graph=CircuitGraph.from_record(data["graph"])))

    def _page(self, n_edges: int = 50, max_edges: int = 1000) -> Page:
        from ..views.circuit import edges_page

        return edges_page(self, n_edges=n_edges, max_edges=max_edges)

    def ranking(self) -> np.ndarray:
        """Flat indices (an int64 numpy array into ``scores.ravel()``) of the existing edges, largest absolute
        score first (computed once: ``scores`` is not meant to change)."""
        if self._ranking is None:
            flat = np.flatnonzero(self.graph.valid().ravel())
            self._ranking = flat[np.argsort(-np.abs(self.scores.ravel()[flat]), kind="stable")]
        return self._ranking

    def top(self, k: int = 20) -> List[Tuple[str, str, float]]:
        """The ``k`` edges of largest absolute score: ``(sender, receiver, score)``, largest first."""
        senders, receivers = self.graph.senders, self.graph.receivers
        out = []
        for flat in self.ranking()[:k]:
            r, u = divmod(int(flat), self.graph.n_senders)
            out.append((senders[u], receivers[r], float(self.scores[r, u])))
        return out

    def circuit(self, n_edges: Optional[int] = None, threshold: Optional[float] = None) -> Circuit:
        """The circuit of the ``n_edges`` best edges, or of every edge with ``|score| >= threshold``."""
        if (n_edges is None) == (threshold is None):
            raise ValueError(f"circuit: give exactly one of n_edges (the best n edges) or threshold (every edge with "
                             f"|score| >= threshold), got n_edges={n_edges!r}, threshold={threshold!r}")
        mask = np.zeros(self.scores.size, dtype=bool)
        ranked = self.ranking()
        if n_edges is not None:
            if isinstance(n_edges, bool) or not isinstance(n_edges, (int, np.integer)) or n_edges < 0:
                raise ValueError(f"n_edges: expected a non-negative int (at most {len(ranked)}), got {n_edges!r}")
            mask[ranked[:int(n_edges)]] = True
        else:
            if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
                raise ValueError(f"threshold: expected a non-negative number, got {threshold!r}")
            mask[ranked[np.abs(self.scores.ravel()[ranked]) >= threshold]] = True
        arguments = {"n_edges": n_edges} if n_edges is not None else {"threshold": threshold}
        return derive(Circuit(self.graph, mask.reshape(self.scores.shape)), self, arguments)

    def node_scores(self) -> Dict[str, float]:
        """Each sender's score: the sum of its edges' scores (its attribution as a node: its output patched
        into every receiver at once, to first order)."""
        return {name: float(v) for name, v in zip(self.graph.senders, self.scores.sum(axis=0))}

    def head_scores(self) -> np.ndarray:
        """``(n_layers, n_heads)`` float64: each head's node score (:meth:`node_scores`)."""

        g = self.graph
        return self.scores.sum(axis=0)[1:].reshape(g.n_layers, g.n_heads + 1)[:, :-1]

    def plot(self, save_path: Optional[PathLike] = None, *, n_edges: int = 50, figsize: Tuple[float, float] = (10, 8),
             title: Optional[str] = None) -> Any:
        """The ``n_edges`` best edges drawn as a graph: nodes by layer (rows) and head (columns), edges coloured
        by sign and weighted by absolute score (see :func:`.plots.plot_edges`)."""
        from .plots import plot_edges

        return plot_edges(self, n_edges, figsize=figsize, save_path=save_path,
                          title=title or f"{self.method.upper()} top {n_edges} edges ({self.metric})")

    def __repr__(self) -> str:
        return (f"EdgeScores({self.method}, {self.graph.n_edges} edges, metric {self.metric}: clean {self.clean:.4g}, "
                f"corrupted {self.corrupted:.4g})")
