"""Head-level activation patching: one attention head of one layer at a time, as batched sweeps.

Cell ``(layer, head)`` replaces that head's output (``attn.heads[:, :, head]``, before the output projection,
at every position) in the corrupted run with its value in the clean run, and reports the recovery of the
metric (see :mod:`.patching`). The cells run on the layer sweeps' machinery (:mod:`.sweep`): a staircase
batch whose patched rows are born at their layer, clean and corrupted rows in the same forward, compiled
programs cached on the model; a layer asked for its heads computes its attention explicitly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import distributed as dist
from ..views.page import Page, Viewable
from ..views.saving import Saveable, attach
from .components import resolve_sites
from .display import show_if_interactive
from .metrics import identical_logits_message
from .patching import _details, sliceable_norm, sharded_sweep
from .validate import (
    check_positive_int,
    prompt_pair,
    require_attention,
    resolve_indices,
    resolve_layers,
    resolve_metric,
)

if TYPE_CHECKING:
    from ..model import InterpretableModel

PathLike = Union[str, Path]
HEADS = "attn.heads"


@dataclasses.dataclass
class HeadPatchingGrid(Saveable, Viewable):
    """A layers x heads grid of recovery percentages.

    Saves and loads (``save(path)``, ``HeadPatchingGrid.load(path)``); ``save_html(path)`` writes the
    interactive view.

    Attributes:
        grid: ``(len(layers), len(heads))`` float64 numpy array; cell ``(i, j)`` is the recovery in percent
            when only head ``heads[j]`` of layer ``layers[i]`` takes its clean output (every position).
        layers: layer index of each row.
        heads: head index of each column.
        metric: the metric used (``"l2"``, ``"logit_diff(' Paris' - ' Rome')"``, ...).
        corrupted_distance: the normaliser of every cell, in the metric's units (see
            :class:`~.patching.PatchingGrid`).
    """

    kind = "head_patching"

    grid: np.ndarray
    layers: List[int]
    heads: List[int]
    metric: str
    corrupted_distance: float

    def plot(self, save_path: Optional[PathLike] = None, *, figsize: Tuple[float, float] = (10, 8),
             cmap: str = "RdBu_r", title: Optional[str] = None) -> Any:
        """Heatmap of the grid (layers as rows, heads as columns); see :func:`mlxterp.plotting.plot_patching_grid`."""
        from ..plotting import plot_patching_grid

        return plot_patching_grid(self.grid, layer_labels=self.layers, position_labels=[f"H{h}" for h in self.heads],
                                  figsize=figsize, cmap=cmap, save_path=save_path, xlabel="head",
                                  title=title or f"Head patching (metric {self.metric})")

    def as_dict(self) -> Dict[int, Dict[int, float]]:
        """``{layer: {head: recovery}}``, recovery a Python float in percent."""
        return {layer: {h: float(v) for h, v in zip(self.heads, row)} for layer, row in zip(self.layers, self.grid)}

    def _page(self) -> Page:
        from ..views.patching import patching_page

        return patching_page(self.grid, self.layers, [f"H{h}" for h in self.heads], [f"head {h}" for h in self.heads],
                             axis="head", title="Head patching", provenance=self.provenance,
                             details=_details(self.metric, "attn.heads", "activation patching of each head's "
                                              "output, every position", self.corrupted_distance))

    def top(self, k: int = 5) -> List[Tuple[int, int, float]]:
        """The ``k`` cells of largest absolute recovery, ``(layer, head, recovery)`` (recovery in percent),
        largest first."""

        order = np.argsort(-np.abs(self.grid), axis=None)[:k]
        return [(self.layers[i], self.heads[j], float(self.grid[i, j]))
                for i, j in zip(*np.unravel_index(order, self.grid.shape))]


def head_patching(model: InterpretableModel, clean_text: Any, corrupted_text: Any, layers: Optional[List[int]] = None,
                  heads: Optional[List[int]] = None, metric: Any = "l2", plot: bool = False,
                  figsize: Tuple[float, float] = (10, 8), cmap: str = "RdBu_r", *,
                  batch_size: Optional[int] = None, progress: bool = False, save_path: Optional[PathLike] = None,
                  target: Any = None, foil: Any = None, distributed: dist.Distributed = "auto") -> HeadPatchingGrid:
    """Recovery (%) for every (layer, head) cell. See
    :meth:`mlxterp.analysis.methods.AnalysisMixin.head_patching` for the arguments."""
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    group = dist.resolve_group(distributed)
    dist.check_same_call(group, "head_patching", clean_text=clean_text, corrupted_text=corrupted_text, layers=layers,
                         heads=heads, metric=metric, target=target, foil=foil)
    tokens = prompt_pair(model, clean_text, corrupted_text)
    layer_ids = resolve_layers(layers, len(model.layers))
    sites = {layer: dataclasses.replace(site, cell_axis=2)
             for layer, site in _head_sites(model, layer_ids, tokens).items()}
    n_heads = min(site.shape[2] for site in sites.values())
    head_ids = resolve_indices(heads, n_heads, arg="heads", unit="head", sort=True,
                               valid=f"the layers have {n_heads} heads (valid indices 0 to {n_heads - 1})")
    metric = resolve_metric(model, metric, tokens, target, foil)
    cells = [(layer, h) for layer in layer_ids for h in head_ids]
    result = sharded_sweep(model, tokens, sites, cells, metric, norm_path=sliceable_norm(model, tokens), group=group,
                           batch_size=batch_size, progress=progress, desc="patching heads")
    if result.corrupted == 0.0:
        raise ValueError(identical_logits_message(metric))
    grid = ((result.corrupted - result.patched) / result.corrupted * 100.0).reshape(len(layer_ids), len(head_ids))
    out = HeadPatchingGrid(grid, layer_ids, head_ids, str(metric), float(result.corrupted))
    attach(out, model, [clean_text, corrupted_text], dict(layers=layers, heads=heads, metric=str(metric),
                                                          target=target, foil=foil))
    if plot or save_path is not None:
        fig = out.plot(save_path, figsize=figsize, cmap=cmap)
        if plot:
            show_if_interactive(fig)
    return out


def _head_sites(model: InterpretableModel, layers: List[int], tokens: Any) -> Dict[int, Any]:
    """The ``attn.heads`` site of each layer, or a ValueError saying why the model has none."""
    require_attention(model, "head patching")
    try:
        return resolve_sites(model, HEADS, layers, tokens)
    except ValueError as e:
        raise ValueError(f"head patching: {e}") from None
