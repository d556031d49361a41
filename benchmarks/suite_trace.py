"""Tracer overhead and the compile cache: what a trace costs over the raw forward it patches.

Cases (each row's candidate is timed against its baseline in the same run):

``eager_overhead``     raw eager forward vs an eager trace with a save and a steering add at every layer.
``compiled_overhead``  the hand-written compiled patch (the floor) vs the same patch as a compiled trace,
                       re-recorded on every call; judged for forwards of 5 ms and more.
``compiled_floor``     raw ``mx.compile(model)`` vs a hand-written compiled forward doing the same saves and adds
                       with no mlxterp at all (informational): the floor for ``compiled_overhead``, the cost
                       of the intervention itself with zero Python tracing.
``steering_sweep``     N traces of one structure with a new steering vector each: compiled vs eager,
                       and retraces after the first (must be 0).
``compile_vs_eager``   raw eager forward vs raw ``mx.compile(model)`` (informational): where MLX's own compile
                       is slower than eager on this machine (context for ``steering_sweep``).
``zero_retrace``       1,000 traces of one structure with new values (an array and a Python float):
                       retraces counted by ``compile_stats()`` (must be 0).
``trace_overhead``     per-trace Python cost (graph building + cache lookup + binding) of a ~20-node
                       program, on a model whose forward is nearly free: compiled trace minus raw compiled
                       forward.
``cache_miss``         the first trace of a new structure (passes + lowering) vs a cache hit (informational).
``capture_all``        ``capture="all"`` vs ``capture="saved"`` (informational), eager and compiled.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Iterator

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask

from mlxterp import interventions as iv

from .context import Context, shape_text
from .harness import Row, Target, Timing, compare, ratio_row, timed

SUITE = "trace"
DESCRIPTION = "tracer overhead over a raw forward, compiled vs eager sweeps, retraces, per-trace Python cost"

EAGER_TARGET = Target("<=", 1.3)
COMPILED_TARGET = Target("<=", 1.05)
FLOOR_JUDGED_S = 5e-3  # compiled_overhead is judged for forwards of at least this long
SWEEP_TARGET = Target("<", 1.0)
# Where a forward is compute-bound on this CPU, mx.compile gains nothing over eager (see compile_vs_eager):
# steering there is judged by the program suite's batched steering_scan instead.
COMPUTE_BOUND = {(8, 128)}
RETRACE_TARGET = Target("==", 0)
OVERHEAD_TARGET = Target("<", 0.3)


# -- programs ---------------------------------------------------------------------------------
def steer_every_layer(im: Any, vector: mx.array) -> None:
    """Inside a trace: save every layer's output and add ``vector`` to it; save the logits (the whole
    forward runs, as in the baselines)."""
    for i in range(len(im.layers)):
        im.layers[i].output.save()
        im.layers[i].output = im.layers[i].output + vector
    im.output.save()


def scale_and_steer_every_layer(im: Any, vector: mx.array, factor: float) -> None:
    """Inside a trace: save every layer's output, then ``output * factor + vector`` (a Python float)."""
    for i in range(len(im.layers)):
        im.layers[i].output.save()
        im.layers[i].output = im.layers[i].output * factor + vector
    im.output.save()


def run_trace(im: Any, tokens: mx.array, program: Callable[[], None], compile: Any = False,
              capture: Any = "saved", interventions: dict | None = None) -> Any:
    """One trace running ``program`` inside the block, with its output and saves evaluated."""
    with im.trace(tokens, interventions=interventions, compile=compile, capture=capture) as tr:
        program()
    mx.eval(tr.saved_values, dict(tr.activations))
    return tr


def _retraces(im: Any, before: dict) -> int:
    return im.compile_stats()["traces"] - before["traces"]


def _skip_rows(ctx: Context, case: str, baseline: str, candidate: str) -> Iterator[Row]:
    """One row per unavailable model, saying why."""
    for name, reason in ctx.missing().items():
        yield Row(SUITE, case, name, "", baseline, candidate, float("nan"), skipped=reason)


def _compare(ctx: Context, baseline: Callable, candidate: Callable) -> tuple[Timing, Timing]:
    s = ctx.settings
    return compare(baseline, candidate, repeats=s.repeats, warmup=s.warmup, min_time=s.min_time)


def _extra(timings: tuple[Timing, Timing]) -> str:
    return f"{(timings[1].median - timings[0].median) * 1e3:+.2f} ms/trace"


# -- cases ------------------------------------------------------------------------------------
def eager_overhead(ctx: Context) -> Iterator[Row]:
    """Raw eager forward vs eager trace with a save and an intervention at every layer."""
    yield from _skip_rows(ctx, "eager_overhead", "raw eager", "eager trace")
    for name, batch, seq in ctx.configs():
        m = ctx.model(name)
        im, tokens, vector = m.wrap(), m.tokens(batch, seq), m.vectors(1)[0]
        timings = _compare(ctx, lambda: mx.eval(m.module(tokens)),
                           lambda: run_trace(im, tokens, lambda: steer_every_layer(im, vector), compile=False))
        yield ratio_row(SUITE, "eager_overhead", name, shape_text(batch, seq), "raw eager",
                        "eager trace (save+add every layer)", timings, EAGER_TARGET, note=_extra(timings))


def compiled_overhead(ctx: Context) -> Iterator[Row]:
    """The hand-written compiled patch (the floor: the same saves and adds, no tracer) vs a compiled trace
    doing them, re-recorded on every call. Judged where the floor's forward takes ``FLOOR_JUDGED_S`` or more;
    below that the per-trace recording is a visible share and a replayed Program is the fast path (see the
    ``program`` suite's ``replay`` rows)."""
    yield from _skip_rows(ctx, "compiled_overhead", "hand-written compiled patch", "compiled trace")
    for name, batch, seq in ctx.configs():
        m = ctx.model(name)
        im, tokens, vector = m.wrap(), m.tokens(batch, seq), m.vectors(1)[0]
        floor = hand_compiled_patch(m.module)
        timings = _compare(ctx, lambda: mx.eval(floor(tokens, vector)),
                           lambda: run_trace(im, tokens, lambda: steer_every_layer(im, vector), compile=True))
        judged = timings[0].median >= FLOOR_JUDGED_S
        note = _extra(timings) + ("" if judged else f"; not judged: the floor's forward is under "
                                                     f"{FLOOR_JUDGED_S * 1e3:.0f} ms (replay a Program there)")
        yield ratio_row(SUITE, "compiled_overhead", name, shape_text(batch, seq), "hand-written compiled patch",
                        "compiled trace (save+add every layer)", timings, COMPILED_TARGET if judged else None,
                        note=note)


def hand_compiled_patch(model: Any) -> Callable[[mx.array, mx.array], tuple[mx.array, list[mx.array]]]:
    """A hand-written, ``mx.compile``-d mlx_lm llama forward that saves every layer's output and adds
    ``vector`` to it, with no mlxterp: ``fn(tokens, vector) -> (logits, saves)``.

    Compiled with ``inputs=[model.state]`` (as mlxterp compiles), so the weights are inputs, not constants.
    """
    inner = model.model

    def forward(tokens: mx.array, vector: mx.array) -> tuple[mx.array, list[mx.array]]:
        h = inner.embed_tokens(tokens)
        mask = create_attention_mask(h, None)
        saves = []
        for layer in inner.layers:
            h = layer(h, mask, None)
            saves.append(h)
            h = h + vector
        h = inner.norm(h)
        logits = inner.embed_tokens.as_linear(h) if model.args.tie_word_embeddings else model.lm_head(h)
        return logits, saves

    return mx.compile(forward, inputs=[model.state])


def _floor_row(ctx: Context, name: str, batch: int, seq: int) -> Row:
    m = ctx.model(name)
    tokens, vector = m.tokens(batch, seq), m.vectors(1)[0]
    raw, patched = mx.compile(m.module), hand_compiled_patch(m.module)
    logits, _ = patched(tokens, mx.zeros_like(vector))
    diff = mx.max(mx.abs(logits - m.module(tokens))).item()
    if not diff < 1e-4:
        raise AssertionError(f"{name}: hand-written forward differs from the model's logits by {diff:.3g}")

    def candidate() -> None:
        logits, saves = patched(tokens, vector)
        mx.eval(logits, saves)

    timings = _compare(ctx, lambda: mx.eval(raw(tokens)), candidate)
    return ratio_row(SUITE, "compiled_floor", name, shape_text(batch, seq), "raw mx.compile",
                     "hand-written mx.compile patch (save+add every layer, no tracer)", timings,
                     note=_extra(timings) + f"; zero-vector logits max abs diff {diff:.1e}")


def compiled_floor(ctx: Context) -> Iterator[Row]:
    """Raw ``mx.compile(model)`` forward vs a hand-written compiled patch (save + add every layer, no tracer)."""
    yield from _skip_rows(ctx, "compiled_floor", "raw mx.compile", "hand-written mx.compile patch")
    for name, batch, seq in ctx.configs():
        yield _floor_row(ctx, name, batch, seq)


def _sweep_step(im: Any, tokens: mx.array, layer: str, vector: mx.array, compile: bool) -> None:
    run_trace(im, tokens, lambda: im.output.save(), compile=compile, interventions={layer: iv.add_vector(vector)})


def steering_sweep(ctx: Context) -> Iterator[Row]:
    """``sweep`` steering traces (a new vector each) eager vs compiled, interleaved in chunks of 10."""
    yield from _skip_rows(ctx, "steering_sweep", "eager sweep", "compiled sweep")
    n = ctx.settings.sweep
    for name, batch, seq in ctx.configs():
        m = ctx.model(name)
        im, tokens, vectors = m.wrap(), m.tokens(batch, seq), m.vectors(n + 1)
        layer = f"layers.{m.layers // 2}"
        _sweep_step(im, tokens, layer, vectors[-1], False)  # lowers the program; the eager warm-up
        first = timed(lambda: _sweep_step(im, tokens, layer, vectors[-1], True))  # traces and compiles
        before = im.compile_stats()
        eager, compiled = [], []  # per-chunk mean seconds per trace, chunks paired back to back
        for c, start in enumerate(range(0, n, 10)):
            chunk = vectors[start:min(n, start + 10)]
            sides = [(eager, False), (compiled, True)]
            for samples, compile in sides if c % 2 == 0 else sides[::-1]:  # alternate who goes first
                samples.append(sum(timed(lambda: _sweep_step(im, tokens, layer, v, compile)) for v in chunk)
                               / len(chunk))
        retraces = _retraces(im, before)
        row = ratio_row(SUITE, "steering_sweep", name, shape_text(batch, seq), "eager sweep",
                        f"compiled sweep ({n} traces, add_vector at {layer})",
                        (Timing(eager), Timing(compiled)), None if (batch, seq) in COMPUTE_BOUND else SWEEP_TARGET,
                        note=f"retraces after first: {retraces}; first compiled trace {first * 1e3:.0f} ms; "
                             f"ratio of totals {sum(compiled) / sum(eager):.3f}x")
        if retraces:
            row.failures.append(f"{retraces} retraces")
        yield row


def _compile_vs_eager_row(ctx: Context, name: str, batch: int, seq: int) -> Row:
    m = ctx.model(name)
    tokens, eager, raw = m.tokens(batch, seq), m.module, mx.compile(m.module)
    timings = _compare(ctx, lambda: mx.eval(eager(tokens)), lambda: mx.eval(raw(tokens)))
    return ratio_row(SUITE, "compile_vs_eager", name, shape_text(batch, seq), "raw eager",
                     "raw mx.compile forward", timings, note=_extra(timings))


def compile_vs_eager(ctx: Context) -> Iterator[Row]:
    """Raw eager forward vs raw ``mx.compile(model)``: where MLX's compile is slower than eager (informational).

    Context for ``steering_sweep`` at b8 s128: on this CPU, fused compiled kernels for broadcasting elementwise
    ops (such as the RMSNorm fallback) are ~2.5x slower than eager's (``mx.fast.rms_norm`` on (8, 128, 256):
    0.34 ms eager vs 0.86 ms compiled), so a compiled sweep can lose to an eager one at large shapes for
    reasons that are MLX's, not the tracer's.
    """
    yield from _skip_rows(ctx, "compile_vs_eager", "raw eager", "raw mx.compile")
    for name, batch, seq in ctx.configs():
        yield _compile_vs_eager_row(ctx, name, batch, seq)


def zero_retrace(ctx: Context) -> Iterator[Row]:
    """``retrace_sweep`` compiled traces of one structure, new array and Python-float values each time."""
    yield from _skip_rows(ctx, "zero_retrace", "first trace", "same structure, new values")
    n = ctx.settings.retrace_sweep
    for name in ctx.available():
        m = ctx.model(name)
        im, tokens = m.wrap(), m.tokens(1, 16)
        vectors = m.vectors(n + 1)
        factors = [1.0 + 0.001 * i for i in range(n + 1)]
        program = lambda i: lambda: scale_and_steer_every_layer(im, vectors[i], factors[i])  # noqa: E731
        run_trace(im, tokens, program(n), compile=True)  # first trace: compiles once
        before = im.compile_stats()
        start = time.perf_counter()
        for i in range(n):
            tr = run_trace(im, tokens, program(i), compile=True)
        per_trace = (time.perf_counter() - start) / n
        after = im.compile_stats()
        nodes = sum(1 for _ in tr.graph)
        yield Row(SUITE, "zero_retrace", name, shape_text(1, 16), "first trace",
                  f"{n} traces, new vector + float each ({nodes} nodes)", after["traces"] - before["traces"],
                  "retraces", RETRACE_TARGET,
                  note=f"{per_trace * 1e3:.2f} ms/trace; cache hits +{after['hits'] - before['hits']}, "
                       f"entries {after['cache_size']}")


def _phase_timed(im: Any, tokens: mx.array, vector: mx.array, builds: list[float]) -> Callable[[], None]:
    """A compiled-trace thunk that also records the CPU time spent building the graph (until the block ends)."""
    def run() -> None:
        start = time.thread_time()
        with im.trace(tokens, compile=True, capture="saved") as tr:
            steer_every_layer(im, vector)
            builds.append(time.thread_time() - start)
        mx.eval(tr.saved_values)
    return run


def _overhead_row(ctx: Context, mode: str, raw: Callable, trace: Callable, label: str, target: Any,
                  extra: str = "") -> Row:
    """Overhead in ms: main-thread CPU time (judged: waiting on a busy machine does not inflate it),
    with the wall-clock difference of minimums beside it."""
    s, m = ctx.settings, ctx.model(ctx.settings.overhead_model)
    reps = dict(repeats=max(50, s.repeats), warmup=3, min_time=s.min_time / 2)
    cpu = compare(raw, trace, clock=time.thread_time, **reps)
    wall = compare(raw, trace, **reps)
    overhead = cpu[1].median - cpu[0].median
    note = (f"CPU-time medians; wall: min {(wall[1].min - wall[0].min) * 1e3:.3f} ms, "
            f"median {(wall[1].median - wall[0].median) * 1e3:.3f} ms, ratio {wall[1].median / wall[0].median:.1f}x")
    return Row(SUITE, "trace_overhead", m.name, shape_text(1, 4), f"raw {mode}", label, overhead * 1e3, "ms",
               target, cpu[0].median, cpu[1].median, wall[1].min / wall[0].min, note + extra)


def trace_overhead(ctx: Context) -> Iterator[Row]:
    """Per-trace Python overhead of a ~20-node program on a nearly free forward, compiled (cache hit) and eager."""
    m = ctx.model(ctx.settings.overhead_model)
    im, tokens, vector = m.wrap(), m.tokens(1, 4), m.vectors(1)[0]
    program = lambda: steer_every_layer(im, vector)  # noqa: E731
    nodes = len(run_trace(im, tokens, program, compile=True).graph)
    raw = mx.compile(m.module)
    builds: list[float] = []
    row = _overhead_row(ctx, "mx.compile", lambda: mx.eval(raw(tokens)), _phase_timed(im, tokens, vector, builds),
                        f"compiled trace, {nodes} nodes (cache hit)", OVERHEAD_TARGET)
    build = Timing(builds[3:]).median  # the first 3 were warm-up calls
    row.note = f"graph building {build * 1e3:.3f} ms, exit {row.value - build * 1e3:.3f} ms; " + row.note
    yield row
    yield _overhead_row(ctx, "eager", lambda: mx.eval(m.module(tokens)),
                        lambda: run_trace(im, tokens, program, compile=False), f"eager trace, {nodes} nodes", None)


def cache_miss(ctx: Context) -> Iterator[Row]:
    """First trace of a new structure (passes + lowering, eager) vs the same trace on a cache hit."""
    yield from _skip_rows(ctx, "cache_miss", "eager trace (hit)", "eager trace (miss)")
    for name in ctx.available():
        m = ctx.model(name)
        im, tokens, vector = m.wrap(), m.tokens(1, 16), m.vectors(1)[0]
        program = lambda: steer_every_layer(im, vector)  # noqa: E731

        def miss() -> None:
            im.clear_compile_cache()
            run_trace(im, tokens, program, compile=False)

        timings = _compare(ctx, lambda: run_trace(im, tokens, program, compile=False), miss)
        yield ratio_row(SUITE, "cache_miss", name, shape_text(1, 16), "eager trace (cache hit)",
                        "eager trace (cache miss: passes+lowering)", timings, note=_extra(timings))


def capture_all(ctx: Context) -> Iterator[Row]:
    """``capture="all"`` vs ``capture="saved"`` on the same program, eager and compiled (informational)."""
    yield from _skip_rows(ctx, "capture_all", "capture=saved", "capture=all")
    for (name, batch, seq), compile in itertools.product(ctx.configs(), (False, True)):
        m = ctx.model(name)
        im, tokens, vector = m.wrap(), m.tokens(batch, seq), m.vectors(1)[0]
        program = lambda: steer_every_layer(im, vector)  # noqa: E731
        timings = _compare(ctx, lambda: run_trace(im, tokens, program, compile=compile, capture="saved"),
                           lambda: run_trace(im, tokens, program, compile=compile, capture="all"))
        mode = "compiled" if compile else "eager"
        yield ratio_row(SUITE, "capture_all", name, shape_text(batch, seq), f"{mode} capture=saved",
                        f"{mode} capture=all", timings)


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {
    "eager_overhead": eager_overhead,
    "compiled_overhead": compiled_overhead,
    "compiled_floor": compiled_floor,
    "steering_sweep": steering_sweep,
    "compile_vs_eager": compile_vs_eager,
    "zero_retrace": zero_retrace,
    "trace_overhead": trace_overhead,
    "cache_miss": cache_miss,
    "capture_all": capture_all,
}
