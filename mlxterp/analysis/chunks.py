"""How a patching sweep's variants are split into chunks: sized by time, so that a sweep's progress bar moves
and Ctrl-C (taken between chunks, see :func:`mlxterp.interrupts.at_step_end`) lands within about a second.

Every chunk runs the clean and corrupted rows through the whole model again (see :mod:`.sweep`), which on a
CPU with a fast BLAS costs nearly a whole forward however few rows there are. So a sweep gets as few chunks
as keep each under :data:`CHUNK_SECONDS`, and never so many that they add more than :data:`MAX_OVERHEAD` to
it: where that forward alone takes seconds (SmolLM2 with 4-bit weights on the mlx-cpu wheel's bundled BLAS),
so does a chunk. The estimates come from two timed eager forwards of the prompts (:func:`forward_timing`), once per
model and prompt shape, so that a repeated sweep gets the same chunks and reuses its compiled programs.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import mlx.core as mx

if TYPE_CHECKING:
    from ..model import InterpretableModel


class Span(NamedTuple):
    """Positions ``start:stop`` patched together as one cell (a conversation's turn)."""

    start: int
    stop: int


# (layer, index along the site's cell axis: a position, a Span of positions, or a head); None: all
Cell = Tuple[int, Union[None, int, Span]]

# Estimated seconds one chunk may take: Ctrl-C is taken between chunks. The estimate is linear in the rows
# and errs long where a fast BLAS batches many rows better than few (SmolLM2 float32 on OpenBLAS: a
# patching grid estimated at 2.1 s ran in 1.1-1.3 s as one chunk, and in 2.4 s as two).
CHUNK_SECONDS = 2.0
# ... unless that needs so many chunks that re-running the clean and corrupted rows in each would make the
# sweep more than this fraction slower than one chunk: then chunks are longer. (Measured on a busy 2-core
# machine, chunks cost more than estimated: 3 chunks planned at +28% took +20% to +60%.)
MAX_OVERHEAD = 1 / 4
WIDE = 8  # extra rows of the forward that measures a row's cost where single rows are dominated by the weights


@dataclasses.dataclass(frozen=True)
class ForwardTiming:
    """Seconds of a forward of the sweep's clean and corrupted rows (``base``), and of each further row
    through one layer (``row_layer``)."""

    base: float
    row_layer: float


_TIMINGS: "weakref.WeakKeyDictionary[Any, Dict[tuple, ForwardTiming]]" = weakref.WeakKeyDictionary()


def chunker(model: InterpretableModel, tokens: mx.array, rows: int, timed: bool,
            norm_path: Optional[str] = None) -> Callable[[List[Cell]], List[List[Cell]]]:
    """The function splitting a sweep's cells into chunks of at most ``rows`` variants: by time
    (:func:`plan_chunks`, timings from :func:`forward_timing`) when ``timed``, else ``rows`` each."""
    if not timed:
        return lambda cells: [cells[i:i + rows] for i in range(0, len(cells), rows)]
    layers = len(model._index)
    return lambda cells: plan_chunks(cells, layers, forward_timing(model, tokens, norm_path), rows) if cells else []


def forward_timing(model: InterpretableModel, tokens: mx.array, norm_path: Optional[str] = None) -> ForwardTiming:
    """Time eager forwards of ``tokens`` (``(2, seq)``), once per model, token shape and final norm. As in a
    sweep, the final norm ``norm_path`` (if any) sees the last position only.

    What a further row costs is read from a forward of the first position alone: what does not shrink with
    the tokens (reading the weights) is paid once per chunk, the rest per row. Where that one position costs
    over half the prompt (a CPU with a fast BLAS, small batches), rows are cheap in bulk and cost more in a
    forward of two than in a sweep's batch, so their cost is measured on :data:`WIDE` more rows instead.
    """
    timings = _TIMINGS.setdefault(model, {})
    key = (tuple(tokens.shape), norm_path)
    if key not in timings:
        layers = len(model._index)
        one = min(_timed_forward(model, tokens[:, :1], norm_path) for _ in range(2))  # the first sets up
        base = _timed_forward(model, tokens, norm_path)
        if one < base / 2:
            row = (base - one) / (tokens.shape[0] * layers)
        else:  # a cheap forward: one more run steadies the base
            base = min(base, _timed_forward(model, tokens, norm_path))
            wide = mx.concatenate([tokens, mx.repeat(tokens[1:2], WIDE, axis=0)], axis=0)
            row = (_timed_forward(model, wide, norm_path) - base) / (WIDE * layers)
        timings[key] = ForwardTiming(base, max(row, 0.0))
    return timings[key]


def _timed_forward(model: InterpretableModel, tokens: mx.array, norm_path: Optional[str]) -> float:
    """Seconds to evaluate a forward of ``tokens`` (recording the trace is not counted)."""
    from ..tracing.proxy import apply
    from .sweep import last_position, saved_value  # sweep imports this module

    with model.trace(tokens, compile=False, capture="saved"):
        if norm_path is not None:
            norm = model.module(norm_path)
            norm.input = apply(last_position, norm.input)
        out = model.output.save()
    start = time.perf_counter()
    mx.eval(saved_value(out))
    return time.perf_counter() - start


def plan_chunks(cells: List[Cell], layers: int, timing: ForwardTiming, max_rows: int) -> List[List[Cell]]:
    """Split ``cells`` (sorted by layer) into the fewest chunks of about equal cost that keep each under
    :data:`CHUNK_SECONDS`, but no more than add :data:`MAX_OVERHEAD` to the sweep, and at most ``max_rows``
    variants each.

    A chunk costs ``timing.base`` (its clean and corrupted rows) plus ``timing.row_layer`` per layer each of
    its variants runs (about ``layers - l`` for a variant patching layer ``l``).
    """
    costs = [layers - layer for layer, _ in cells]
    n = chunk_count(timing.base, timing.row_layer * sum(costs))
    share = sum(costs) / n
    chunks: List[List[Cell]] = [[] for _ in range(n)]
    done = 0
    for cell, cost in zip(cells, costs):
        chunks[min(n - 1, int((done + cost / 2) / share))].append(cell)
        done += cost
    return [c[i:i + max_rows] for c in chunks if c for i in range(0, len(c), max_rows)]


def chunk_count(base: float, variants: float) -> int:
    """How many chunks a sweep whose variants take ``variants`` seconds (in one chunk, beside the ``base``
    seconds of its clean and corrupted rows) is split into (see :func:`plan_chunks`)."""
    base = max(base, 1e-9)
    most = 1 + int(MAX_OVERHEAD * (base + variants) / base)  # (n - 1) * base <= MAX_OVERHEAD * one chunk
    if base >= CHUNK_SECONDS:
        return most
    return max(1, min(most, math.ceil(variants / (CHUNK_SECONDS - base))))
