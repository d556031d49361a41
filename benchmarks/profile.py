"""``python -m benchmarks --profile``: where the per-trace Python time goes (cProfile).

Profiles a loop of compiled traces (cache hits) of the ``trace_overhead`` program on a model whose forward
is nearly free, so that what remains is the tracer's own cost: graph building, cache lookup, running the
compiled function, binding results.
"""

from __future__ import annotations

import cProfile
import io
import pstats

from .models import load
from .suite_trace import run_trace, steer_every_layer


def profile_overhead(model: str = "micro4", shape: tuple[int, int] = (1, 4), traces: int = 1000,
                     top: int = 30) -> str:
    """cProfile report (by own time, then cumulative) of ``traces`` compiled traces on ``model``."""
    m = load(model)
    im, tokens, vector = m.wrap(), m.tokens(*shape), m.vectors(1)[0]
    program = lambda: steer_every_layer(im, vector)  # noqa: E731
    for _ in range(3):
        run_trace(im, tokens, program, compile=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(traces):
        run_trace(im, tokens, program, compile=True)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(f"{traces} compiled traces of a save+add program at each of {m.layers} layers on {model} "
              f"(b{shape[0]} s{shape[1]}); times include cProfile's own overhead\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
