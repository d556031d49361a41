"""Feature nodes: the scores of every feature and error node of several dictionaries, and feature circuits.

A node is ``(dictionary, position, feature)``: feature ``feature`` of a dictionary at a position, or, with
``feature == "error"``, that dictionary's error term at the position (one node per position: the whole
``d_out``-wide error vector). Nodes are ranked by absolute score across every dictionary, ties broken by the
order of the dictionaries, then position, then feature (a dictionary's error nodes after its features), so a
ranking is deterministic. Both results save and load (``save(path)``, ``load(path)``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..inputs import is_int
from ..views.saving import Saveable, derive

PathLike = Union[str, Path]
ERROR = "error"
Node = Tuple[str, int, Union[int, str]]  # (dictionary, position, feature or "error")


def _flat(features: List[np.ndarray], errors: List[np.ndarray]) -> np.ndarray:
    """Every node's value in ranking order: per dictionary its ``(seq, d_sae)`` features row-major, then its
    ``seq`` error nodes."""
    return np.concatenate([a for f, e in zip(features, errors) for a in (f.ravel(), e.ravel())])


def _unflat(flat: np.ndarray, shapes: List[Tuple[int, int]]) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    features, errors, at = [], [], 0
    for seq, width in shapes:
        features.append(flat[at:at + seq * width].reshape(seq, width))
        errors.append(flat[at + seq * width:at + seq * (width + 1)])
        at += seq * (width + 1)
    return features, errors


def _node(dictionaries: List[str], shapes: List[Tuple[int, int]], index: int) -> Node:
    """The node at flat ranking index ``index``."""
    for label, (seq, width) in zip(dictionaries, shapes):
        if index < seq * width:
            t, f = divmod(index, width)
            return label, t, f
        index -= seq * width
        if index < seq:
            return label, index, ERROR
        index -= seq
    raise IndexError(f"node index out of range of {len(dictionaries)} dictionaries' nodes")


@dataclasses.dataclass
class FeatureCircuit(Saveable):
    """A set of feature and error nodes of several dictionaries (chosen by :meth:`FeatureScores.circuit`).

    Attributes:
        dictionaries: the dictionaries' labels, in the order they were given.
        tokens: the prompt's tokens as text (the first clean prompt's).
        features: per dictionary a ``(seq, d_sae)`` bool numpy array: the features in the circuit.
        errors: per dictionary a ``(seq,)`` bool numpy array: the error nodes in the circuit.
    """

    kind = "feature_circuit"

    dictionaries: List[str]
    tokens: List[str]
    features: List[np.ndarray]
    errors: List[np.ndarray]

    def __post_init__(self) -> None:
        self.features = [np.asarray(f, dtype=bool) for f in self.features]
        self.errors = [np.asarray(e, dtype=bool) for e in self.errors]
        seq = len(self.tokens)
        if len(self.features) != len(self.dictionaries) or len(self.errors) != len(self.dictionaries):
            raise ValueError(f"a FeatureCircuit needs one features mask and one errors mask per dictionary "
                             f"({len(self.dictionaries)}), got {len(self.features)} and {len(self.errors)}")
        for label, f, e in zip(self.dictionaries, self.features, self.errors):
            if f.ndim != 2 or f.shape[0] != seq or e.shape != (seq,):
                raise ValueError(f"{label}: expected masks (seq, d_sae) and (seq,) with seq = {seq}, got {f.shape} "
                                 f"and {e.shape}")

    @property
    def nodes(self) -> List[Node]:
        """``(dictionary, position, feature or "error")`` of every node in the circuit, in ranking order."""
        shapes = [f.shape for f in self.features]
        return [_node(self.dictionaries, shapes, int(i)) for i in np.flatnonzero(_flat(self.features, self.errors))]

    def __len__(self) -> int:
        return int(sum(f.sum() + e.sum() for f, e in zip(self.features, self.errors)))

    def __contains__(self, node: object) -> bool:
        if not isinstance(node, tuple) or len(node) != 3 or node[0] not in self.dictionaries:
            return False
        i, (_, t, f) = self.dictionaries.index(node[0]), node
        if not is_int(t) or not 0 <= int(t) < len(self.tokens):
            return False
        if f == ERROR:
            return bool(self.errors[i][int(t)])
        return is_int(f) and 0 <= int(f) < self.features[i].shape[1] and bool(self.features[i][int(t), int(f)])

    def __repr__(self) -> str:
        total = sum(f.size + e.size for f, e in zip(self.features, self.errors))
        errors = sum(int(e.sum()) for e in self.errors)
        return f"FeatureCircuit({len(self)} nodes of {total}, {errors} of them error nodes, {len(self.dictionaries)} " \
               f"dictionaries)"


@dataclasses.dataclass
class FeatureScores(Saveable):
    """Attribution scores of every feature and error node of several dictionaries (see
    :func:`mlxterp.circuits.feature_attribution`). Saves and loads (``save(path)``, ``FeatureScores.load(path)``).

    Attributes:
        dictionaries: the dictionaries' labels (``architecture@site``), in the order given.
        tokens: the first clean prompt's tokens as text.
        features: per dictionary a ``(seq, d_sae)`` float32 numpy array: ``features[i][t, f]`` estimates the
            change of the metric (averaged over the prompts, in its units) when feature ``f`` of dictionary ``i``
            at position ``t`` takes its clean value in the corrupted run (patching), or is zeroed (ablation).
        errors: per dictionary a ``(seq,)`` float32 numpy array: the same for its error term at each position.
        mode: ``"patching"`` (clean vs corrupted) or ``"ablation"`` (zeroing, on the clean prompts).
        steps: points of the integrated gradients (1: attribution patching).
        metric: the metric's label.
        clean: the metric on the clean prompts (mean over the prompts).
        corrupted: the metric on the corrupted prompts (NaN in ablation mode).
    """

    kind = "feature_scores"

    dictionaries: List[str]
    tokens: List[str]
    features: List[np.ndarray]
    errors: List[np.ndarray]
    mode: str
    steps: int
    metric: str
    clean: float
    corrupted: float
    _ranking: Optional[np.ndarray] = dataclasses.field(default=None, repr=False, compare=False)

    def _record_fields(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_ranking"}

    @property
    def n_nodes(self) -> int:
        """Every node: ``seq * (d_sae + 1)`` per dictionary."""
        return int(sum(f.size + e.size for f, e in zip(self.features, self.errors)))

    def ranking(self) -> np.ndarray:
        """Flat node indices (int64, in the order of the module docstring), largest absolute score first
        (computed once)."""
        if self._ranking is None:
            self._ranking = np.argsort(-np.abs(_flat(self.features, self.errors)), kind="stable")
        return self._ranking

    def top(self, k: int = 20) -> List[Tuple[str, int, str, Union[int, str], float]]:
        """The ``k`` nodes of largest absolute score across every dictionary: ``(dictionary, position, token,
        feature or "error", score)``, largest first."""
        flat, shapes = _flat(self.features, self.errors), [f.shape for f in self.features]
        out = []
        for i in self.ranking()[:k]:
            label, t, f = _node(self.dictionaries, shapes, int(i))
            out.append((label, t, self.tokens[t], f, float(flat[i])))
        return out

    def scores(self, dictionary: Union[int, str]) -> Tuple[np.ndarray, np.ndarray]:
        """One dictionary's ``(features (seq, d_sae), errors (seq,))`` scores, by index or label."""
        return self.features[self._index(dictionary)], self.errors[self._index(dictionary)]

    def totals(self) -> Dict[str, float]:
        """Each dictionary's summed scores (features and error nodes): its whole estimated effect."""
        return {label: float(f.sum() + e.sum()) for label, f, e in zip(self.dictionaries, self.features, self.errors)}

    def circuit(self, n_nodes: Optional[int] = None, threshold: Optional[float] = None) -> FeatureCircuit:
        """The circuit of the ``n_nodes`` best nodes (error nodes compete with features), or of every node with
        ``|score| >= threshold``."""
        if (n_nodes is None) == (threshold is None):
            raise ValueError(f"circuit: give exactly one of n_nodes (the best n nodes) or threshold (every node with "
                             f"|score| >= threshold), got n_nodes={n_nodes!r}, threshold={threshold!r}")
        ranked = self.ranking()
        mask = np.zeros(ranked.size, dtype=bool)
        if n_nodes is not None:
            if not is_int(n_nodes) or not 0 <= int(n_nodes) <= ranked.size:
                raise ValueError(f"n_nodes: expected an int from 0 to {ranked.size} (the nodes), got {n_nodes!r}")
            mask[ranked[:int(n_nodes)]] = True
        else:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
                raise ValueError(f"threshold: expected a non-negative number, got {threshold!r}")
            mask[np.abs(_flat(self.features, self.errors)) >= threshold] = True
        features, errors = _unflat(mask, [f.shape for f in self.features])
        found = FeatureCircuit(list(self.dictionaries), list(self.tokens), features, errors)
        return derive(found, self, {"n_nodes": n_nodes} if n_nodes is not None else {"threshold": threshold})

    def plot(self, k: int = 20, save_path: Optional[PathLike] = None, *,
             figsize: Tuple[float, float] = (10, 6)) -> Any:
        """Bars of the ``k`` best nodes (``dictionary: feature @ position:token``) beside each dictionary's
        summed scores."""
        from ..features import plots

        top = self.top(k)
        fig, axes = plots.figure(figsize, 1, 2)
        plots.bars(axes[0][0], [f"{d}: {f} @ {t}:{tok!r}" for d, t, tok, f, _ in top], [s for *_, s in top],
                   f"top nodes ({self.mode}, {self.metric})",
                   colors=["#4c72b0" if s >= 0 else "#c44e52" for *_, s in top])
        totals = self.totals()
        plots.bars(axes[0][1], list(totals), list(totals.values()), "summed per dictionary")
        return plots.finish(fig, save_path)

    def _index(self, dictionary: Union[int, str]) -> int:
        if is_int(dictionary) and 0 <= int(dictionary) < len(self.dictionaries):
            return int(dictionary)
        if isinstance(dictionary, str) and dictionary in self.dictionaries:
            return self.dictionaries.index(dictionary)
        raise KeyError(f"dictionary {dictionary!r}: expected an index below {len(self.dictionaries)} or one of "
                       f"{self.dictionaries}")

    def __repr__(self) -> str:
        corrupted = "" if self.mode == "ablation" else f", corrupted {self.corrupted:.4g}"
        head = (f"FeatureScores({self.mode}, steps={self.steps}, {self.n_nodes} nodes of {len(self.dictionaries)} "
                f"dictionaries, metric {self.metric}: clean {self.clean:.4g}{corrupted})")
        rows = [f"  {d} {t:>3} {tok!r:<10} {f!s:>6}: {s:+.4g}" for d, t, tok, f, s in self.top(5)]
        return "\n".join([head] + rows)
