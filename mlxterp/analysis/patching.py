"""Activation patching: per layer (``activation_patching``), per layer x position (``patching_grid``,
ROME-style causal tracing) and its gradient estimate (``attribution_patching``).

Recovery of a patched run is ``(d(corrupted, clean) - d(patched, clean)) / d(corrupted, clean) * 100``
with ``d`` a distance (``l2``, ``cosine``, ``mse``; float32) between the last position's logits, or, for a
score metric ``m`` (``logit_diff`` of a target and a foil token, the target's ``logprob`` or ``prob``, any
function of the logits), ``(m(patched) - m(corrupted)) / (m(clean) - m(corrupted)) * 100`` (see
:mod:`.metrics`). 100 % means patching restored the clean behaviour; 0 % that it changed nothing; it may be
negative or exceed 100.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import mlx.core as mx
import numpy as np

from .. import distributed as dist
from ..views.page import Page, Viewable
from ..views.saving import Saveable, attach
from .attribution import attribution_grid
from .components import ComponentSite, resolve_sites
from .display import show_if_interactive
from .metrics import Metric, identical_logits_message
from .serial import holds_model_lock
from .sweep import SweepResult, run_sweep
from .unembed import UnembeddingError, find_unembedding
from .validate import check_positive_int, prompt_pair, resolve_layers, resolve_metric, resolve_positions, token_labels

if TYPE_CHECKING:
    from ..model import InterpretableModel

PathLike = Union[str, Path]


class LayerPatchingResult(dict, Saveable, Viewable):
    """Recovery (%) per layer, ``{layer: recovery}`` (a dict of Python floats in percent, as
    ``activation_patching`` always returned).

    Saves and loads (``save(path)``, ``LayerPatchingResult.load(path)``); ``save_html(path)`` writes the
    interactive view (one column of layers).

    Attributes:
        component: the patched component (``"mlp"``, ...).
        metric: the metric used (``"l2"``, ``"logit_diff(' Paris' - ' Rome')"``, ...).
        corrupted_distance: the normaliser of every layer (see :class:`PatchingGrid`), in the metric's units.
    """

    kind = "layer_patching"

    def __init__(self, recovery: Dict[int, float], component: str, metric: str, corrupted_distance: float):
        super().__init__(recovery)
        self.component, self.metric, self.corrupted_distance = component, metric, corrupted_distance

    def _record_fields(self) -> Dict[str, Any]:
        return {"recovery": dict(self), "component": self.component, "metric": self.metric,
                "corrupted_distance": self.corrupted_distance}

    @classmethod
    def _from_record(cls, data: Dict[str, Any]) -> "LayerPatchingResult":
        return cls(**data)

    def _page(self) -> Page:
        from ..views.patching import patching_page

        column = np.array(list(self.values()), dtype=np.float64)[:, None]
        return patching_page(column, list(self), [self.component], [f"{self.component} (all positions)"],
                             axis="component", title="Activation patching", provenance=self.provenance,
                             details=_details(self.metric, self.component, "activation patching",
                                              self.corrupted_distance))


def _details(metric: str, component: str, method: str, normaliser: float) -> List[Tuple[str, str]]:
    """The header lines of a patching page after its prompts."""
    return [("Metric", metric), ("Component", f"{component} ({method})"),
            ("Normaliser", f"{normaliser:.6g} (d(corrupted, clean), or m(clean) - m(corrupted) for a score)")]


@dataclasses.dataclass
class PatchingGrid(Saveable, Viewable):
    """A layers x positions grid of recovery percentages.

    Saves and loads (``save(path)``, ``PatchingGrid.load(path)``); ``save_html(path)`` writes the
    interactive view.

    Attributes:
        grid: ``(len(layers), len(positions))`` float64 numpy array; cell ``(i, j)`` is the recovery in
            percent when only position ``positions[j]`` of the component at layer ``layers[i]`` is patched (or
            its linear estimate, for attribution patching).
        layers: layer index of each row.
        positions: token position of each column.
        position_labels: the clean prompt's token at each column; ``*`` marks positions where the clean
            and corrupted tokens differ.
        metric: the metric used (``"l2"``, ``"cosine"``, ``"mse"``, or a score such as
            ``"logit_diff(' Paris' - ' Rome')"``).
        component: the patched component (``"output"``, ``"mlp"``, ...).
        method: ``"activation patching"`` or ``"attribution patching"``.
        corrupted_distance: ``d(corrupted, clean)`` (for a score metric ``m(clean) - m(corrupted)``), the
            normaliser of every cell, in the metric's units (a distance between float32 logits, or the
            score's own: logits for ``logit_diff``, nats for ``logprob``, a probability for ``prob``).
    """

    kind = "patching_grid"

    grid: np.ndarray
    layers: List[int]
    positions: List[int]
    position_labels: List[str]
    metric: str
    component: str
    method: str
    corrupted_distance: float

    def plot(self, save_path: Optional[PathLike] = None, *, figsize: Tuple[float, float] = (12, 8),
             cmap: str = "RdBu_r", title: Optional[str] = None) -> Any:
        """Heatmap of the grid (layers as rows) with :func:`mlxterp.plotting.plot_patching_grid`.

        Args:
            save_path: if given, write a PNG there.
            figsize: figure size in inches.
            cmap: diverging colormap.
            title: figure title (default names the method, component and metric).

        Returns:
            The matplotlib Figure (never shown here; see ``show_if_interactive``).
        """
        from ..plotting import plot_patching_grid

        title = title or f"{self.method.capitalize()}: {self.component} (metric {self.metric})"
        return plot_patching_grid(self.grid, layer_labels=self.layers, position_labels=self.position_labels,
                                  figsize=figsize, cmap=cmap, title=title, save_path=save_path)

    def as_dict(self) -> Dict[int, Dict[int, float]]:
        """``{layer: {position: recovery}}``, recovery a Python float in percent."""

        return {layer: {pos: float(v) for pos, v in zip(self.positions, row)}
                for layer, row in zip(self.layers, self.grid)}

    def _page(self) -> Page:
        from ..views.patching import patching_page

        titles = [f"position {p} {label!r}" for p, label in zip(self.positions, self.position_labels)]
        return patching_page(self.grid, self.layers, self.position_labels, titles, axis="position",
                             title=self.method.capitalize(), provenance=self.provenance,
                             details=_details(self.metric, self.component, self.method, self.corrupted_distance)
                             + [("Positions", "* marks a position where the clean and corrupted tokens differ")])


@dataclasses.dataclass(frozen=True)
class _Setup:
    tokens: mx.array
    layers: List[int]
    sites: Dict[int, ComponentSite]
    metric: Metric
    norm_path: Optional[str]


def _setup(model: InterpretableModel, clean_text: Any, corrupted_text: Any, component: Any, layers: Any, metric: Any,
           target: Any = None, foil: Any = None) -> _Setup:
    tokens = prompt_pair(model, clean_text, corrupted_text)
    layer_ids = resolve_layers(layers, len(model.layers))
    sites = resolve_sites(model, component, layer_ids, tokens)
    metric = resolve_metric(model, metric, tokens, target, foil)
    return _Setup(tokens, layer_ids, sites, metric, sliceable_norm(model, tokens))


def sliceable_norm(model: InterpretableModel, tokens: mx.array) -> Optional[str]:
    """The final norm, if cutting its input to the last position is safe (called once, per position, and
    no edit of the model reads or writes a later value position-dependently: ``[:, 0]`` of the logits
    would land on the last position)."""
    try:
        norm_path = find_unembedding(model).norm_path
    except UnembeddingError:
        return None
    probe = model._probe(tokens)
    if norm_path is None or probe.call_counts().get(norm_path) != 1:
        return None
    if model._positional_edit_after(probe.events, (norm_path, 0, "input")):
        return None
    spec_in, spec_out = probe.values.get((norm_path, 0, "input")), probe.values.get(("", 0, "output"))
    ok = all(isinstance(s, tuple) and len(s[0]) == 3 and tuple(s[0][:2]) == tuple(tokens.shape)
             for s in (spec_in, spec_out))
    return norm_path if ok else None


def _labels(model: InterpretableModel, tokens: mx.array, positions: List[int]) -> List[str]:
    clean, corrupted = tokens[0].tolist(), tokens[1].tolist()
    labels = token_labels(model, [clean[p] for p in positions])
    return [label + ("*" if clean[p] != corrupted[p] else "") for label, p in zip(labels, positions)]


@holds_model_lock
def activation_patching(model: InterpretableModel, clean_text: Any, corrupted_text: Any, component: str = "mlp",
                        layers: Optional[List[int]] = None, metric: str = "l2", plot: bool = False,
                        figsize: Tuple[float, float] = (12, 8), cmap: str = "RdBu_r", *,
                        batch_size: Optional[int] = None, progress: bool = False,
                        save_path: Optional[PathLike] = None, target: Any = None,
                        foil: Any = None, distributed: dist.Distributed = "auto") -> LayerPatchingResult:
    """Recovery (%) per layer when the component's clean output replaces the corrupted one (all positions).

    See :meth:`mlxterp.analysis.methods.AnalysisMixin.activation_patching` for the arguments.
    """
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    group = dist.resolve_group(distributed)
    dist.check_same_call(group, "activation_patching", clean_text=clean_text, corrupted_text=corrupted_text,
                         component=component, layers=layers, metric=metric, target=target, foil=foil)
    s = _setup(model, clean_text, corrupted_text, component, layers, metric, target, foil)
    cells = [(layer, None) for layer in s.layers]
    result = sharded_sweep(model, s.tokens, s.sites, cells, s.metric, norm_path=s.norm_path, group=group,
                           batch_size=batch_size, progress=progress, desc=f"patching {component}")
    if result.corrupted == 0.0:
        raise ValueError(identical_logits_message(s.metric))
    rec = (result.corrupted - result.patched) / result.corrupted * 100.0
    recovery = LayerPatchingResult({layer: float(r) for layer, r in zip(s.layers, rec)}, component, str(s.metric),
                                   float(result.corrupted))
    attach(recovery, model, [clean_text, corrupted_text],
           {"component": component, "layers": layers, "metric": str(s.metric), "target": target, "foil": foil})
    if plot or save_path is not None:
        from ..plotting import plot_patching_bars

        fig = plot_patching_bars(recovery, component=component, figsize=figsize, cmap=cmap,
                                 title=f"Activation patching recovery by layer ({component}, metric {s.metric})",
                                 save_path=save_path)
        if plot:
            show_if_interactive(fig)
    return recovery


@holds_model_lock
def patching_grid(model: InterpretableModel, clean_text: Any, corrupted_text: Any, component: str = "output",
                  layers: Optional[List[int]] = None, positions: Optional[List[int]] = None, metric: str = "l2",
                  plot: bool = False, figsize: Tuple[float, float] = (12, 8), cmap: str = "RdBu_r", *,
                  batch_size: Optional[int] = None, progress: bool = False,
                  save_path: Optional[PathLike] = None, target: Any = None, foil: Any = None,
                  distributed: dist.Distributed = "auto") -> PatchingGrid:
    """Recovery (%) for every (layer, position) cell, patching one position of one layer's component.

    See :meth:`mlxterp.analysis.methods.AnalysisMixin.patching_grid` for the arguments.
    """
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    group = dist.resolve_group(distributed)
    dist.check_same_call(group, "patching_grid", clean_text=clean_text, corrupted_text=corrupted_text,
                         component=component, layers=layers, positions=positions, metric=metric, target=target,
                         foil=foil)
    s = _setup(model, clean_text, corrupted_text, component, layers, metric, target, foil)
    cols = resolve_positions(positions, s.tokens.shape[1])
    cells = [(layer, p) for layer in s.layers for p in cols]
    result = sharded_sweep(model, s.tokens, s.sites, cells, s.metric, norm_path=s.norm_path, group=group,
                           batch_size=batch_size, progress=progress, desc=f"patching {component} x positions")
    if result.corrupted == 0.0:
        raise ValueError(identical_logits_message(s.metric))
    grid = ((result.corrupted - result.patched) / result.corrupted * 100.0).reshape(len(s.layers), len(cols))
    out = PatchingGrid(grid, s.layers, cols, _labels(model, s.tokens, cols), str(s.metric), component,
                       "activation patching", float(result.corrupted))
    attach(out, model, [clean_text, corrupted_text], dict(component=component, layers=layers, positions=positions,
                                                          metric=str(s.metric), target=target, foil=foil))
    _maybe_plot(out, plot, save_path, figsize, cmap)
    return out


def sharded_sweep(model: InterpretableModel, tokens: mx.array, sites: Dict[int, ComponentSite], cells: List[Any], metric: Any, *,
                  norm_path: Optional[str], group: Optional[Any], batch_size: Optional[int] = None,
                  progress: bool = False, desc: str = "patching") -> SweepResult:
    """:func:`~.sweep.run_sweep` on this rank's share of ``cells`` (all of them alone), gathered so that every
    rank returns every cell; the corrupted run's distance is rank 0's, so all ranks return the same numbers.
    ``group``: from :func:`mlxterp.distributed.resolve_group` (None: this process alone)."""
    part = run_sweep(model, tokens, sites, dist.my_items(cells, group), metric, norm_path=norm_path,
                     batch_size=batch_size, progress=progress and dist.rank(group) == 0, desc=desc)
    if group is None:
        return part
    heads = dist.gather(np.array([part.corrupted, part.forwards], dtype=np.float64), group)
    patched = dist.gather_items(part.patched, len(cells), group)
    return SweepResult(patched, float(heads[0][0]), int(sum(h[1] for h in heads)))


@holds_model_lock
def attribution_patching(model: InterpretableModel, clean_text: Any, corrupted_text: Any, component: str = "output",
                         layers: Optional[List[int]] = None, positions: Optional[List[int]] = None,
                         metric: str = "l2", plot: bool = False, figsize: Tuple[float, float] = (12, 8),
                         cmap: str = "RdBu_r", *, save_path: Optional[PathLike] = None, target: Any = None,
                         foil: Any = None) -> PatchingGrid:
    """Linear (gradient) estimate of :func:`patching_grid`, from one clean and one corrupted forward+backward.

    See :meth:`mlxterp.analysis.methods.AnalysisMixin.attribution_patching` for the arguments.
    """
    s = _setup(model, clean_text, corrupted_text, component, layers, metric, target, foil)
    cols = resolve_positions(positions, s.tokens.shape[1])
    grid, d0 = attribution_grid(model, s.tokens, s.sites, cols, s.metric, s.norm_path)
    out = PatchingGrid(grid, s.layers, cols, _labels(model, s.tokens, cols), str(s.metric), component,
                       "attribution patching", float(d0))
    attach(out, model, [clean_text, corrupted_text], dict(component=component, layers=layers, positions=positions,
                                                          metric=str(s.metric), target=target, foil=foil))
    _maybe_plot(out, plot, save_path, figsize, cmap)
    return out


def _maybe_plot(result: PatchingGrid, plot: bool, save_path: Optional[PathLike], figsize: Tuple[float, float],
                cmap: str) -> None:
    if plot or save_path is not None:
        fig = result.plot(save_path, figsize=figsize, cmap=cmap)
        if plot:
            show_if_interactive(fig)
