"""Vectorised patching sweeps: many patched variants of one forward, as a few batched compiled traces.

The batch is a *staircase*. Row 0 runs the clean prompt, row 1 the corrupted one, unpatched. A variant
that patches layer ``i`` computes exactly the corrupted run below layer ``i``, so instead of running it
from the start it is born at layer ``i``: the layer's input grows by copies of row 1
(``model.layers[i].input = apply(grow_rows, x, n)``), and the component's output in each new row takes
the clean row's value at the variant's positions (``apply(mx.where, mask, clean, out)``, with the mask a
lifted parameter). Clean activations come from row 0 of the same forward, and the last position's
logits of rows 0 and 1 are the clean and corrupted references, so one trace gives all of them. ``L``
variants then cost about ``L / 2`` single-row forwards of compute instead of ``2 + 2L`` forwards.

When the patched component is the whole layer (``"output"``), a variant does not need to run its own
layer: its rows are born at the *next* layer's input (or, after the last layer, at the final norm's
input) as copies of the corrupted row with the clean row's values at the variant's positions
(``apply(grow_patched, next.input, mask)``). That equals patching the layer's output as long as what runs
between the two is the identity, which each trace checks (``array_equal`` of the layer's output and the
next input, evaluated with the distances); a chunk where it fails is run again the general way.

Cells at a position before the first token where the prompts differ are not run: in a causal model the
clean and corrupted activations there are identical, so patching them changes nothing (recovery exactly
0). The first chunk's trace checks that identity for the skipped layers (rows 0 and 1 of the component
output over that prefix, evaluated with the distances); cells of a layer where it fails are run.

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


def grow_patched(x: mx.array, mask: mx.array) -> mx.array:
    """``x`` with ``len(mask) - len(x)`` new rows appended: copies of row 1 (corrupted) taking row 0's
    (clean) values where ``mask`` (its last rows: the new ones) is true."""
    new = mask.shape[0] - x.shape[0]
    return mx.concatenate([x, mx.where(mask[-new:], x[0:1], x[1:2])], axis=0)


def same_values(a: mx.array, b: mx.array) -> mx.array:
    """Whether two arrays are equal (a scalar bool array)."""
    return mx.array_equal(a, b)


def same_prefix(out: mx.array, mask: mx.array) -> mx.array:
    """Whether rows 0 and 1 of ``out`` are equal where ``mask`` (``(1, seq, 1, ...)``) is true."""
    return mx.all(mx.where(mask, out[0:1] == out[1:2], True))


def shared_prefix(tokens: mx.array) -> int:
    """Number of leading positions where the two rows of ``tokens`` agree."""
    rows = np.array(tokens)
    differ = np.flatnonzero(rows[0] != rows[1])
    return int(differ[0]) if len(differ) else int(rows.shape[1])


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
    prefix = shared_prefix(tokens)
    skipped = [c for c in cells if c[1] is not None and c[1] < prefix]
    todo = [c for c in cells if not (c[1] is not None and c[1] < prefix)]
    queue = [todo[i:i + size] for i in range(0, len(todo), size)] or [[]]  # one chunk at least: d(corrupted)
    checked = sorted({layer for layer, _ in skipped})
    births = _next_inputs(model, tokens, sites, norm_path)
    found: Dict[Cell, float] = {}
    corrupted, forwards = None, 0
    with _progress(len(cells), progress, desc) as bar:
        while queue:
            chunk = queue.pop(0)
            prefix_check = (checked, prefix) if corrupted is None and checked else None
            values, births, prefix_ok = _run_chunk(model, tokens, sites, chunk, metric, norm_path, births,
                                                   prefix_check)
            forwards += 1
            if corrupted is None:
                corrupted = values[1]
                failed = {layer for layer, ok in zip(checked, prefix_ok) if not ok}
                redo = [c for c in skipped if c[0] in failed]  # not causal after all: run those cells
                queue += [redo[i:i + size] for i in range(0, len(redo), size)]
                skipped = [c for c in skipped if c[0] not in failed]
                bar.update(len(skipped))
            found.update(zip(chunk, values[2:]))
            bar.update(len(chunk))
    found.update((c, corrupted) for c in skipped)  # patching an identical activation: d(patched) = d(corrupted)
    return SweepResult(np.array([found[c] for c in cells], dtype=np.float64), float(corrupted), forwards)


def _run_chunk(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], chunk: List[Cell], metric: str,
               norm_path: Optional[str], births: Dict[int, str], prefix_check: Optional[Tuple[List[int], int]],
               ) -> Tuple[np.ndarray, Dict[int, str], List[bool]]:
    """Distances of one chunk's rows (clean, corrupted, variants), the births to use from now on, and the
    prefix checks' results."""
    logits, checks, prefix_ok = _chunk_logits(model, tokens, sites, chunk, norm_path, births, prefix_check)
    d = distance(logits, logits[0:1], metric)
    mx.eval(d, checks, prefix_ok)
    if not all(bool(c.item()) for c in checks):  # something runs between two layers: the general way
        births = {}
        logits, _, _ = _chunk_logits(model, tokens, sites, chunk, norm_path, births, None)
        d = distance(logits, logits[0:1], metric)
        mx.eval(d)
    return np.array(d, dtype=np.float64), births, [bool(ok.item()) for ok in prefix_ok]


def _next_inputs(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite],
                 norm_path: Optional[str]) -> Dict[int, str]:
    """``{layer: module}`` for the whole-layer sites whose variants can be born at the next module's input:
    the next layer (or the final norm after the last layer), called once, whose input has the layer
    output's shape and dtype."""
    probe = model._probe(tokens)
    counts = probe.call_counts()
    out = {}
    for layer, site in sites.items():
        if site.path != site.layer_path:
            continue
        nxt = model._index.layer_path(layer + 1) if layer + 1 < len(model._index) else norm_path
        if nxt is None or counts.get(nxt) != 1:
            continue
        spec_out, spec_in = probe.values.get((site.layer_path, 0, "output")), probe.values.get((nxt, 0, "input"))
        if isinstance(spec_out, tuple) and spec_out == spec_in:
            out[layer] = nxt
    return out


def _chunk_logits(model: Any, tokens: mx.array, sites: Dict[int, ComponentSite], chunk: List[Cell],
                  norm_path: Optional[str], births: Dict[int, str],
                  prefix_check: Optional[Tuple[List[int], int]] = None,
                  ) -> Tuple[mx.array, List[mx.array], List[mx.array]]:
    """One staircase trace: last-position logits ``(2 + len(chunk), vocab)``, the identity checks of the
    variants born at a next module's input, and the prefix checks of ``prefix_check = (layers, prefix)``
    (see the module docstring)."""
    seq_len, rows = tokens.shape[1], 2
    checks, prefix_ok = [], []
    with model.trace(tokens, compile=True, capture="saved"):
        if prefix_check is not None:
            layers, prefix = prefix_check
            for layer in layers:
                site = sites[layer]
                mask = np.zeros((1, seq_len) + (1,) * (len(site.shape) - 2), dtype=np.bool_)
                mask[:, :prefix] = True
                out = model.module(site.path).output
                prefix_ok.append(apply(same_prefix, out, mx.array(mask)).save())
        for layer, group in itertools.groupby(chunk, key=lambda c: c[0]):
            group = list(group)
            site = sites[layer]
            block = model.module(site.layer_path)
            rows += len(group)
            mask = cell_mask(rows, seq_len, len(site.shape), group)
            if layer in births:
                nxt = model.module(births[layer])
                checks.append(apply(same_values, block.output, nxt.input).save())
                nxt.input = apply(grow_patched, nxt.input, mask)
                continue
            block.input = apply(grow_rows, block.input, len(group))
            component = model.module(site.path)
            component.output = apply(patch_rows, component.output, mask)
        if norm_path is not None:
            norm = model.module(norm_path)
            norm.input = apply(last_position, norm.input)
        handle = model.output[:, -1, :].save()
    return saved_value(handle), [saved_value(c) for c in checks], [saved_value(c) for c in prefix_ok]


def saved_value(handle: Any) -> mx.array:
    """The array behind a saved handle (a bound proxy, or the array itself once rebound)."""
    return handle if isinstance(handle, mx.array) else handle.value


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="variant", disable=not enabled)
