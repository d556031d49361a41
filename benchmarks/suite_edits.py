"""Edited models: what carrying an edit costs over writing the same intervention in every trace.

An edited model records its edits at the start of every trace (a recorded edit is replayed node by node),
so the forward it runs is the one the base model runs with the same intervention in its trace; the
difference is the replay's Python cost. Baseline: the base model's trace with the intervention (written
in the block for the recorded edit, ``interventions=`` for the dict edit); candidate: the edited model's
trace without it. Both save the last position's logits. Eager and compiled rows.

Clock: process CPU time (``time.process_time``: the Python thread and MLX's evaluation thread together),
which other processes on a shared machine do not inflate; the wall-clock ratio of the same calls is in
each row's notes.

``edited_forward``          a recorded edit (``output[:, -1] += v`` at layer L/2) and a dict edit
                            (``iv.add_vector(v)`` at layer L/2). Target: <= 1.05x.
``weight_edited_forward``   a rank-one weight edit (the edited model runs its own copy-on-write module
                            tree) vs the base model with the same weight set in place. Target: <= 1.05x.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Iterator

import mlx.core as mx

from mlxterp import interventions as iv

from .context import Context, shape_text
from .harness import Row, Target, Timing, paired_ratio, ratio_row, rotating

SUITE = "edits"
DESCRIPTION = "edited models vs the base model with the same intervention in the trace"

TARGET = Target("<=", 1.05)


def _logits(im: Any, tokens: mx.array, compile: bool, block: Callable[[Any], None] = lambda im: None,
            interventions: Any = None) -> Callable[[], None]:
    def run() -> None:
        with im.trace(tokens, compile=compile, capture="saved", interventions=interventions) as tr:
            block(im)
            im.output[:, -1].save("logits")
        mx.eval(tr.saved_values)

    return run


def _steer(layer: int, v: mx.array) -> Callable[[Any], None]:
    def block(im: Any) -> None:
        im.layers[layer].output[:, -1] = im.layers[layer].output[:, -1] + v

    return block


def _measure(baseline: Callable[[], None], candidate: Callable[[], None], ctx: Context) -> tuple:
    """Interleaved CPU-time timings of both sides (as ``compare``, on the process clock), and the wall-clock
    ratio of the same calls (for the notes)."""
    s = ctx.settings
    for _ in range(s.warmup):
        baseline()
        candidate()
    rounds = max(s.repeats, 2)
    samples = rotating([baseline, candidate], rounds, [False, False], _both_clocks)
    while sum(c for side in samples for c, _ in side) < s.min_time and len(samples[0]) < 400:
        more = rotating([baseline, candidate], rounds, [False, False], _both_clocks)
        samples = [a + b for a, b in zip(samples, more)]
    cpu = tuple(Timing([c for c, _ in side]) for side in samples)
    wall = tuple(Timing([w for _, w in side]) for side in samples)
    return cpu, f"wall-clock ratio {paired_ratio(*wall):.3f}x"


def _both_clocks(fn: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _pairs(base: Any, layer: int, v: mx.array) -> Iterator[tuple[str, Any, dict]]:
    """(label, edited model, the baseline trace's arguments giving the base model the same intervention)."""
    with base.edit() as recorded:
        _steer(layer, v)(base)
    yield "recorded edit", recorded.model, {"block": _steer(layer, v)}
    edited = base.edit({f"layers.{layer}": iv.add_vector(v)})
    yield "dict edit", edited, {"interventions": {f"layers.{layer}": iv.add_vector(v)}}


def edited_forward(ctx: Context) -> Iterator[Row]:
    """An edited model's trace vs the base model's trace with the same intervention."""
    for name, reason in ctx.missing().items():
        yield Row(SUITE, "edited_forward", name, "", "trace", "edited", float("nan"), skipped=reason)
    for (name, batch, seq), compile in itertools.product(ctx.configs(), (False, True)):
        m = ctx.model(name)
        base, tokens, v = m.wrap(), m.tokens(batch, seq), m.vectors(1)[0]
        mode = "compiled" if compile else "eager"
        for label, edited, base_args in _pairs(base, m.layers // 2, v):
            timings, note = _measure(_logits(base, tokens, compile, **base_args), _logits(edited, tokens, compile), ctx)
            yield ratio_row(SUITE, "edited_forward", name, shape_text(batch, seq),
                            f"{mode} trace + the intervention", f"{mode} trace of the model with a {label}", timings,
                            TARGET, note)


def weight_edited_forward(ctx: Context) -> Iterator[Row]:
    """A weight-edited model (copy-on-write tree) vs the base model with the same weight set in place."""
    for name, reason in ctx.missing().items():
        yield Row(SUITE, "weight_edited_forward", name, "", "trace", "edited", float("nan"), skipped=reason)
    for (name, batch, seq), compile in itertools.product(ctx.configs(), (False, True)):
        m = ctx.model(name)
        tokens = m.tokens(batch, seq)
        mlp = m.module.model.layers[m.layers // 2].mlp.down_proj
        old = mlp.weight
        u = 0.01 * mx.random.normal((old.shape[0],), key=mx.random.key(2))
        w = mx.random.normal((old.shape[1],), key=mx.random.key(3))
        new = old + mx.outer(u, w).astype(old.dtype)
        mx.eval(new)
        edited = m.wrap().edit_weights({f"layers.{m.layers // 2}.mlp.down_proj.weight": new})
        in_place = m.wrap()
        mlp.weight = new  # the base module with the same weight (restored below)
        try:
            timings, note = _measure(_logits(in_place, tokens, compile), _logits(edited, tokens, compile), ctx)
        finally:
            mlp.weight = old
        mode = "compiled" if compile else "eager"
        yield ratio_row(SUITE, "weight_edited_forward", name, shape_text(batch, seq),
                        f"{mode} trace, weight set in place", f"{mode} trace of the weight-edited model", timings,
                        TARGET, note)


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {
    "edited_forward": edited_forward,
    "weight_edited_forward": weight_edited_forward,
}
