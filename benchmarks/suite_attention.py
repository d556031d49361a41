"""Attention internals: what reading attention patterns costs over the same trace without them.

A layer asked for its internals computes its attention explicitly (scores, softmax, weighted values) instead
of calling the fused kernel; every other layer keeps the fused one. Baseline: a trace saving the logits
(the plain forward through the tracer; the trace suite compares that with the raw forward); candidate: the
same trace also saving attention patterns. Eager and compiled (``compile=True``) rows.

``pattern_one_layer``   one layer's pattern (the middle layer). Target: <= 1.15x.
``pattern_all_layers``  every layer's pattern. Target: <= 2x.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator

import mlx.core as mx

from .context import Context, shape_text
from .harness import Row, Target, compare, ratio_row

SUITE = "attention"
DESCRIPTION = "attention patterns (explicit attention where asked) vs the same trace without them"

ONE_LAYER_TARGET = Target("<=", 1.15)
ALL_LAYERS_TARGET = Target("<=", 2.0)


def _trace(im: Any, tokens: mx.array, compile: bool, layers: Iterable[int]) -> None:
    with im.trace(tokens, compile=compile, capture="saved") as tr:
        for i in layers:
            im.layers[i].attn.pattern.save()
        im.output.save()
    mx.eval(tr.output, tr.saved_values)


def _rows(ctx: Context, case: str, pick: Callable[[int], list], target: Target, label: str) -> Iterator[Row]:
    for name, reason in ctx.missing().items():
        yield Row(SUITE, case, name, "", "trace", label, float("nan"), skipped=reason)
    s = ctx.settings
    for (name, batch, seq), compile in itertools.product(ctx.configs(), (False, True)):
        m = ctx.model(name)
        im, tokens, layers = m.wrap(), m.tokens(batch, seq), pick(m.layers)
        timings = compare(lambda: _trace(im, tokens, compile, []), lambda: _trace(im, tokens, compile, layers),
                          repeats=s.repeats, warmup=s.warmup, min_time=s.min_time)
        mode = "compiled" if compile else "eager"
        yield ratio_row(SUITE, case, name, shape_text(batch, seq), f"{mode} trace (logits)",
                        f"{mode} trace + {label}", timings, target)


def pattern_one_layer(ctx: Context) -> Iterator[Row]:
    """A trace saving the middle layer's attention pattern vs the same trace without it."""
    yield from _rows(ctx, "pattern_one_layer", lambda n: [n // 2], ONE_LAYER_TARGET, "one layer's pattern")


def pattern_all_layers(ctx: Context) -> Iterator[Row]:
    """A trace saving every layer's attention pattern vs the same trace without them."""
    yield from _rows(ctx, "pattern_all_layers", lambda n: list(range(n)), ALL_LAYERS_TARGET, "every layer's pattern")


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {
    "pattern_one_layer": pattern_one_layer,
    "pattern_all_layers": pattern_all_layers,
}
