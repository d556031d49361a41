"""Vectorised patching sweeps: many patched variants of one forward, as a few batched compiled traces.

The batch is a *staircase*. Row 0 runs the clean prompt, row 1 the corrupted one, unpatched. A variant
that patches layer ``i`` computes exactly the corrupted run below layer ``i``, so instead of running it
from the start it is born at layer ``i``: the layer's input grows by copies of row 1
(``model.layers[i].input = apply(grow_rows, x, n)``), and the component's output in each new row takes
the clean row's value at the variant's positions (``apply(mx.where, mask, clean, out)``, with the mask a
lifted parameter). Clean activations come from row 0 of the same forward, and the last position's
logits of rows 0 and 1 are the clean and corrupted references, so one trace gives all of them. ``L``
variants then cost about ``L / 2`` single-row forwards of compute instead of ``2 + 2L`` forwards.

Variants (cells) are ordered by layer and split into chunks of ``batch_size`` rows, one compiled trace
each (``compile=True``: a repeated sweep reuses the programs; masks are parameters). When the model has
a final norm, its input is cut to the last position, so the vocabulary projection runs on one position.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..tracing.proxy import apply
from .components import ComponentSite
from .metrics import distance

# Activation elements (rows x seq x width) one chunk may hold when batch_size is not given.
AUTO_BUDGET = 1 << 25

Cell = Tuple[int, Optional[int]]  # (layer, position); position None patches every position


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Distances of each patched variant, and of the corrupted run, from the clean run (float64)."""

    patched: np.ndarray
    corrupted: float
    forwards: int


def grow_rows(x: mx.array, n: int) -> mx.array:
    """``x`` with ``n`` copies of its row 1 (the corrupted run) appended along the batch axis."""
    return mx.concatenate([x, mx.repeat(x[1:2], n, axis=0)], axis=0)


def patch_rows(out: mx.array, mask: mx.array) -> mx.array:
    """``out`` with the clean row's values (row 0) where ``mask`` is true."""
    return mx.where(mask, out[0:1], out)


def last_position(x: mx.array) -> mx.array:
    """The last position of a ``(batch, seq, ...)`` array, keeping the axis."""
    return x[:, -1:]


def auto_batch_size(sites: Dict[int, ComponentSite], seq_len: int) -> int:
    """Rows per chunk keeping about :data:`AUTO_BUDGET` activation elements per tensor."""
    width = max(s.width for s in sites.values())
    return max(1, AUTO_BUDGET // max(1, seq_len * width))


def cell_mask(rows: int, seq_len: int, ndim: int, new_cells: Sequence[Cell]) -> mx.array:
    """Boolean ``(rows, seq, 1, ...)`` mask: the last ``len(new_cells)`` rows at their positions."""
    mask = np.zeros((rows, seq_len) + (1,) * (ndim - 2), dtype=np.bool_)
    first = rows - len(new_cells)
    for k, (_, pos) in enumerate(new_cells):
        if pos is None:
            mask[first + k] = True
        else:
            mask[first + k, pos] = True
    return mx.array(mask)


def run_sweep(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], cells: List[Cell], metric: str, *,
              norm_path: Optional[str], batch_size: Optional[int] = None, progress: bool = False,
              desc: str = "patching") -> SweepResult:
    """Distance from the clean logits (last position) of every cell's patched run, and of the corrupted run.

    Args:
        model: the InterpretableModel.
        tokens: ``(2, seq)``: clean prompt in row 0, corrupted in row 1.
        sites: component site per layer.
        cells: ``(layer, position or None)`` variants, sorted by layer.
        metric: distance name (see :mod:`.metrics`).
        norm_path: final norm whose input is cut to the last position (None: project every position).
        batch_size: patched rows per chunk (None: :func:`auto_batch_size`).
        progress: show a tqdm bar over cells.
        desc: progress bar label.
    """
    size = batch_size or auto_batch_size(sites, tokens.shape[1])
    chunks = [cells[i:i + size] for i in range(0, len(cells), size)]
    patched, corrupted = [], None
    with _progress(len(cells), progress, desc) as bar:
        for chunk in chunks:
            logits = _chunk_logits(model, tokens, sites, chunk, norm_path)
            d = distance(logits, logits[0:1], metric)
            mx.eval(d)
            values = np.array(d, dtype=np.float64)
            corrupted = values[1] if corrupted is None else corrupted
            patched.append(values[2:])
            bar.update(len(chunk))
    return SweepResult(np.concatenate(patched), float(corrupted), len(chunks))


def _chunk_logits(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], chunk: List[Cell],
                  norm_path: Optional[str]) -> mx.array:
    """One staircase trace: last-position logits ``(2 + len(chunk), vocab)``."""
    seq_len, rows = tokens.shape[1], 2
    with model.trace(tokens, compile=True, capture="saved"):
        for layer, group in itertools.groupby(chunk, key=lambda c: c[0]):
            group = list(group)
            site = sites[layer]
            block = model.module(site.layer_path)
            block.input = apply(grow_rows, block.input, len(group))
            rows += len(group)
            component = model.module(site.path)
            mask = cell_mask(rows, seq_len, len(site.shape), group)
            component.output = apply(patch_rows, component.output, mask)
        if norm_path is not None:
            norm = model.module(norm_path)
            norm.input = apply(last_position, norm.input)
        handle = model.output[:, -1, :].save()
    return saved_value(handle)


def saved_value(handle: Any) -> mx.array:
    """The array behind a saved handle (a bound proxy, or the array itself once rebound)."""
    return handle if isinstance(handle, mx.array) else handle.value


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="variant", disable=not enabled)
