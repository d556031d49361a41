"""Edge patching and circuit faithfulness (the public functions behind the model's methods).

A circuit's faithfulness is ``(m(circuit) - m(empty)) / (m(full) - m(empty))``: the share of the full model's
metric, measured from the run with every edge ablated, that the circuit's edges alone recover (1: as
faithful as the model; 0: no better than nothing). With ``ablation="corrupted"`` the empty circuit is the
corrupted run itself; with ``"mean"`` every edge carries its sender's mean over the corrupted prompts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np

from ..analysis.display import show_if_interactive
from ..views.saving import Saveable, attach
from .edges import Circuit, EdgeScores
from .inputs import check_ablation, check_sizes, circuit_metric, prompt_pair
from .nodes import CircuitGraph
from .nodes import check_granularity
from .parts import circuit_parts, find_parts
from .patching import Variant, run_variants

if TYPE_CHECKING:
    from ..model import InterpretableModel

PathLike = Union[str, Path]


@dataclasses.dataclass
class EdgePatching(Saveable):
    """The metric of the clean prompts with some edges patched (saves and loads: ``save(path)``,
    ``EdgePatching.load(path)``).

    Attributes:
        value: the metric with the edges patched (mean over the prompts; a Python float in the metric's
            units).
        corrupted: the metric of the corrupted prompts (NaN with mean ablation over a different number of
            prompts than the clean ones: a metric may read one target per clean prompt).
        logits: ``(batch, vocab)`` ``mx.array`` in the model's output dtype: the last position's logits of the
            patched run.
        edges: the patched edges, as a :class:`~.edges.Circuit`.
        metric: the metric's label.
    """

    kind = "edge_patching"

    value: float
    corrupted: float
    logits: mx.array
    edges: Circuit
    metric: str

    def _record_fields(self) -> dict:
        return dict(super()._record_fields(), edges=self.edges._record_fields())

    @classmethod
    def _from_record(cls, data: dict) -> "EdgePatching":
        return cls(**dict(data, edges=Circuit._from_record(data["edges"])))


@dataclasses.dataclass
class Faithfulness(Saveable):
    """How much of the model's behaviour one circuit carries (saves and loads: ``save(path)``,
    ``Faithfulness.load(path)``).

    Attributes:
        value: the metric with only the circuit's edges (every other edge ablated; mean over the prompts, a
            Python float in the metric's units).
        clean: the metric of the full model on the clean prompts.
        baseline: the metric with every edge ablated (the corrupted run for ``ablation="corrupted"``).
        n_edges: edges in the circuit.
        ablation: ``"corrupted"`` or ``"mean"``.
        metric: the metric's label.
    """

    kind = "faithfulness"

    value: float
    clean: float
    baseline: float
    n_edges: int
    ablation: str
    metric: str

    @property
    def faithfulness(self) -> float:
        """``(value - baseline) / (clean - baseline)``, a fraction (1: as faithful as the full model; not percent;
        NaN when the full and empty runs score the same)."""
        gap = self.clean - self.baseline
        return (self.value - self.baseline) / gap if gap != 0 else float("nan")


@dataclasses.dataclass
class FaithfulnessCurve(Saveable):
    """Faithfulness of the best-``n`` circuits for several ``n`` (one batched forward; saves and loads:
    ``save(path)``, ``FaithfulnessCurve.load(path)``).

    Attributes:
        sizes: edges (or nodes, for feature circuits) in each circuit.
        values: ``(len(sizes),)`` float64 numpy: each circuit's metric (mean over the prompts).
        clean, baseline, ablation, metric: as in :class:`Faithfulness`.
        unit: what ``sizes`` count: ``"edges"`` (edge circuits) or ``"nodes"`` (feature circuits,
            :func:`mlxterp.circuits.feature_faithfulness`).
    """

    kind = "faithfulness_curve"

    sizes: List[int]
    values: np.ndarray
    clean: float
    baseline: float
    ablation: str
    metric: str
    unit: str = "edges"

    @property
    def faithfulness(self) -> np.ndarray:
        """``(values - baseline) / (clean - baseline)`` per size: a float64 ``(len(sizes),)`` array of fractions
        (1: as faithful as the full model)."""

        gap = self.clean - self.baseline
        return (self.values - self.baseline) / gap if gap != 0 else np.full(len(self.values), np.nan)

    def as_dict(self) -> dict:
        """``{size: faithfulness}`` (``to_dict()`` is the saved record)."""
        return {n: float(f) for n, f in zip(self.sizes, self.faithfulness)}

    def plot(self, save_path: Optional[PathLike] = None, *, figsize: Tuple[float, float] = (8, 5),
             title: Optional[str] = None) -> Any:
        """Faithfulness against circuit size (log-scaled when every size is positive)."""
        from .plots import plot_faithfulness

        return plot_faithfulness(self, figsize=figsize, save_path=save_path,
                                 title=title or f"Circuit faithfulness ({self.metric}, {self.ablation} ablation)")


def _circuit(model: InterpretableModel, edges: Any, receivers: str, arg: str) -> Circuit:
    """A :class:`Circuit` (checked against this model), or one built from ``(sender, receiver)`` pairs."""
    granularity = edges.graph.granularity if isinstance(edges, Circuit) else check_granularity(receivers)
    graph = find_parts(model).graph_for(granularity)
    if isinstance(edges, Circuit):
        if edges.graph != graph:
            raise ValueError(f"{arg}: this circuit belongs to another model's graph ({edges.graph}); this model's is "
                             f"{graph}")
        return edges
    if isinstance(edges, (str, bytes)) or not isinstance(edges, (list, tuple, set)):
        raise ValueError(f"{arg}: expected a Circuit or a list of (sender, receiver) pairs, got {edges!r}")
    return Circuit.from_edges(graph, edges, arg)


def _setup(model: InterpretableModel, clean: Any, corrupted: Any, metric: Any, ablation: str, target: Any,
           foil: Any) -> tuple:
    ablation = check_ablation(ablation)
    clean_tokens, source = prompt_pair(model, clean, corrupted, same_rows=ablation == "corrupted")
    found = circuit_metric(model, metric, clean_tokens, source, target, foil)
    return clean_tokens, source, found, ablation == "mean"


def edge_patching(model: InterpretableModel, clean: Any, corrupted: Any, edges: Any, metric: Any = "logit_diff", *,
                  ablation: str = "corrupted", receivers: str = "heads", target: Any = None,
                  foil: Any = None) -> EdgePatching:
    """See :meth:`mlxterp.circuits.methods.CircuitsMixin.edge_patching`."""
    circuit = _circuit(model, edges, receivers, "edges")
    clean_tokens, source, found, mean = _setup(model, clean, corrupted, metric, ablation, target, foil)
    values, corrupted_value, _, logits = run_variants(model, circuit_parts(model), circuit.graph, clean_tokens,
                                                      source, [Variant(circuit.mask, kept=False)], found, mean)
    out = EdgePatching(float(values[0]), corrupted_value, logits[0], circuit, str(found))
    return attach(out, model, [clean, corrupted], _arguments(circuit, found, ablation, target, foil))


def _arguments(circuit: Circuit, metric: Any, ablation: str, target: Any, foil: Any) -> dict:
    """A call's arguments as a result's provenance records them."""
    return {"edges": _edges(circuit), "receivers": circuit.graph.granularity, "metric": str(metric),
            "ablation": ablation, "target": target, "foil": foil}


def _edges(circuit: Circuit) -> Any:
    """How a result's provenance names a circuit: the arguments it was chosen with from edge scores (their
    method, ``n_edges`` or ``threshold``), else its edges when there are few, else their count."""
    prov = getattr(circuit, "_provenance", None)  # (not .provenance: that would fingerprint the weights now)
    if prov:
        return dict(prov.get("arguments") or {}, n_edges=len(circuit))
    return circuit.edges if len(circuit) <= 100 else f"{len(circuit)} edges"


def _evaluate(model: InterpretableModel, graph: CircuitGraph, masks: Sequence[np.ndarray], clean: Any,
              corrupted: Any, metric: Any, ablation: str, target: Any, foil: Any) -> tuple:
    """The metric of each circuit, of the full model (the clean run) and of the empty circuit (the corrupted run;
    with mean ablation a variant of its own), from one forward of the circuits."""
    clean_tokens, source, found, mean = _setup(model, clean, corrupted, metric, ablation, target, foil)
    variants = [Variant(m, kept=True) for m in masks]
    if mean:
        variants.append(Variant(np.zeros((graph.n_receivers, graph.n_senders), dtype=bool), kept=True))
    values, source_value, clean_value, _ = run_variants(model, circuit_parts(model), graph, clean_tokens, source,
                                                        variants, found, mean, need_clean=True)
    baseline = float(values[-1]) if mean else source_value
    return values[:len(masks)], clean_value, baseline, str(found)


def evaluate_circuit(model: InterpretableModel, circuit: Any, clean: Any, corrupted: Any, metric: Any = "logit_diff",
                     *, ablation: str = "corrupted", receivers: str = "heads", target: Any = None,
                     foil: Any = None) -> Faithfulness:
    """See :meth:`mlxterp.circuits.methods.CircuitsMixin.evaluate_circuit`."""
    found = _circuit(model, circuit, receivers, "circuit")
    values, full, baseline, label = _evaluate(model, found.graph, [found.mask], clean, corrupted, metric, ablation,
                                              target, foil)
    out = Faithfulness(float(values[0]), full, baseline, len(found), ablation, label)
    return attach(out, model, [clean, corrupted], _arguments(found, label, ablation, target, foil))


def faithfulness_curve(model: InterpretableModel, edges: EdgeScores, clean: Any, corrupted: Any,
                       sizes: Sequence[int] = (10, 20, 50, 100, 200, 500), metric: Any = "logit_diff", *,
                       ablation: str = "corrupted", target: Any = None, foil: Any = None, plot: bool = False,
                       save_path: Optional[PathLike] = None) -> FaithfulnessCurve:
    """See :meth:`mlxterp.circuits.methods.CircuitsMixin.faithfulness_curve`."""
    if not isinstance(edges, EdgeScores):
        raise ValueError(f"edges: expected the EdgeScores of model.edge_attribution(...), got {type(edges).__name__}")
    _circuit(model, edges.circuit(n_edges=0), edges.graph.granularity, "edges")  # same model's graph
    sizes = check_sizes(sizes, edges.graph.n_edges)
    masks = [edges.circuit(n_edges=n).mask for n in sizes]
    values, full, baseline, label = _evaluate(model, edges.graph, masks, clean, corrupted, metric, ablation, target,
                                              foil)
    out = FaithfulnessCurve(sizes, np.asarray(values, dtype=np.float64), full, baseline, ablation, label)
    scored = (getattr(edges, "_provenance", None) or {}).get("arguments") or {}
    attach(out, model, [clean, corrupted], {"edges": dict(scored, method=edges.method, steps=edges.steps),
                                            "sizes": sizes, "metric": label, "ablation": ablation, "target": target,
                                            "foil": foil})
    if plot or save_path is not None:
        fig = out.plot(save_path)
        if plot:
            show_if_interactive(fig)
    return out
