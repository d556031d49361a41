"""``python -m benchmarks --profile``: where the per-trace Python time goes (cProfile).

Profiles a loop of compiled traces (cache hits) of the ``trace_overhead`` program on a model whose forward
is nearly free, so that what remains is the tracer's own cost: graph building, cache lookup, running the
compiled function, binding results.
"""

from __future__ import annotations

import cProfile
import io
import pstats

import mlx.core as mx

from .context import Settings
from .models import load
from .suite_trace import run_trace, steer_every_layer


def profile_overhead(settings: Settings, traces: int = 2000, top: int = 30) -> str:
    """cProfile report (by own time, then cumulative) of ``traces`` compiled traces."""
    m = load(settings.overhead_model)
    im, tokens, vector = m.wrap(), m.tokens(1, 4), m.vectors(1)[0]
    program = lambda: steer_every_layer(im, vector)  # noqa: E731
    for _ in range(3):
        run_trace(im, tokens, program, compile=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(traces):
        run_trace(im, tokens, program, compile=True)
    profiler.disable()
    mx.eval(mx.array(0))
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(f"{traces} compiled traces of a {len(list(im.layers))}-layer save+add program on "
              f"{settings.overhead_model} (b1 s4); times include cProfile's own overhead\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
