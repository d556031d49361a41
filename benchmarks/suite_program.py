"""Programs: a recorded trace replayed as a compiled function, scanned over many values in one batched
forward, and differentiated.

Cases (each judged against a floor measured in the same run):

``replay``         the hand-written ``mx.compile`` patch (save + add at every layer, no tracer: the floor) vs
                   ``prog(steer=v)``, the same patch recorded once as a Program and replayed with its default
                   tokens (no recording, no token check).
``steering_scan``  K steering vectors: a loop of K compiled traces vs one folded program call
                   (``prog.batched``), judged against the batching floor of the same run: a loop of K raw
                   ``mx.compile`` forwards vs one raw forward on the K copies stacked in the batch.
``gradient``       ``mx.grad`` of a logit difference with respect to a steering vector, through the program,
                   in forward-equivalents (its time over the raw compiled forward's).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import mlx.core as mx

import mlxterp as mt
from mlxterp import interventions as iv

from .context import Context, shape_text
from .harness import Row, Target, compare, paired_ratio, ratio_row
from .suite_trace import hand_compiled_patch

SUITE = "program"
DESCRIPTION = "Program replay vs the hand-written floor, batched steering scans vs the batching floor, gradients"

REPLAY_TARGET = Target("<=", 1.03)
SCAN_TARGET = Target(">=", 0.9)
GRADIENT_TARGET = Target("<=", 3.0)


def _skip_rows(ctx: Context, case: str, baseline: str, candidate: str) -> Iterator[Row]:
    for name, reason in ctx.missing().items():
        yield Row(SUITE, case, name, "", baseline, candidate, float("nan"), skipped=reason)


def _compare(ctx: Context, baseline: Callable, candidate: Callable, repeats: int | None = None) -> tuple:
    s = ctx.settings
    return compare(baseline, candidate, repeats=repeats or s.repeats, warmup=s.warmup, min_time=s.min_time)


def steering_program(im: Any, tokens: mx.array, vector: mx.array) -> mt.Program:
    """The floor's patch as a program: save and add ``steer`` at every layer, save the logits."""
    with im.trace(tokens, capture="saved") as tr:
        steer = mt.param("steer", vector)
        for i in range(len(im.layers)):
            im.layers[i].output.save(f"h{i}")
            im.layers[i].output = im.layers[i].output + steer
        im.output.save("logits")
    return tr.program()


def _replay_row(ctx: Context, name: str, batch: int, seq: int) -> Row:
    m = ctx.model(name)
    im, tokens, vector = m.wrap(), m.tokens(batch, seq), m.vectors(1)[0]
    floor = hand_compiled_patch(m.module)
    prog = steering_program(im, tokens, mx.zeros_like(vector))
    out, (logits, _) = prog(steer=vector), floor(tokens, vector)
    diff = mx.max(mx.abs(out["logits"] - logits)).item()
    if not diff < 1e-4:
        raise AssertionError(f"{name}: the program's logits differ from the hand-written patch's by {diff:.3g}")
    timings = _compare(ctx, lambda: mx.eval(floor(tokens, vector)), lambda: mx.eval(prog(steer=vector)))
    return ratio_row(SUITE, "replay", name, shape_text(batch, seq), "hand-written mx.compile patch (floor)",
                     "Program replay (save+add every layer)", timings, REPLAY_TARGET,
                     note=f"{(timings[1].median - timings[0].median) * 1e3:+.3f} ms/call; logits max abs diff "
                          f"{diff:.1e}")


def replay(ctx: Context) -> Iterator[Row]:
    """Hand-written compiled patch vs the same patch as a replayed Program."""
    yield from _skip_rows(ctx, "replay", "hand-written mx.compile patch", "Program replay")
    for name, batch, seq in ctx.configs():
        yield _replay_row(ctx, name, batch, seq)


def _scan_row(ctx: Context, name: str, batch: int, seq: int) -> Row:
    m = ctx.model(name)
    k = ctx.settings.scan
    im, tokens = m.wrap(), m.tokens(batch, seq)
    vectors = mx.stack(m.vectors(k))
    layer = f"layers.{m.layers // 2}"

    def traced(v: mx.array) -> mx.array:
        with im.trace(tokens, compile=True, capture="saved", interventions={layer: iv.add_vector(v)}):
            last = im.output[:, -1].save()
        return last

    with im.trace(tokens, capture="saved") as tr:
        im.module(layer).output = im.module(layer).output + mt.param("steer", vectors[0])
        im.output[:, -1].save("last")
    prog = tr.program()
    got, want = prog.batched(steer=vectors[:3])["last"], mx.stack([traced(vectors[j]) for j in range(3)])
    diff = mx.max(mx.abs(got - want)).item()
    if not diff < 1e-4:
        raise AssertionError(f"{name}: the batched scan differs from separate traces by {diff:.3g}")

    raw, stacked = mx.compile(m.module), mx.concatenate([tokens] * k, axis=0)
    floor = _compare(ctx, lambda: mx.eval([raw(tokens) for _ in range(k)]), lambda: mx.eval(raw(stacked)), 3)
    scan = _compare(ctx, lambda: mx.eval([traced(vectors[j]) for j in range(k)]),
                    lambda: mx.eval(prog.batched(steer=vectors)["last"]), 3)
    floor_gain, scan_gain = 1 / paired_ratio(*floor), 1 / paired_ratio(*scan)
    return Row(SUITE, "steering_scan", name, shape_text(batch, seq), "batching floor's gain",
               f"batched program's gain ({k} vectors, add_vector at {layer})", scan_gain / floor_gain, "x",
               SCAN_TARGET, scan[0].median, scan[1].median, note=(
                   f"scan: {k} compiled traces / one batched call = {scan_gain:.2f}x; floor: {k} raw compiled "
                   f"forwards / one batch of {k} = {floor_gain:.2f}x; max abs diff vs traces {diff:.1e}"))


def steering_scan(ctx: Context) -> Iterator[Row]:
    """K steering vectors: loop of compiled traces vs one batched program call, against the batching floor."""
    yield from _skip_rows(ctx, "steering_scan", "batching floor", "batched program")
    for name, batch, seq in ctx.configs():
        yield _scan_row(ctx, name, batch, seq)


def gradient(ctx: Context) -> Iterator[Row]:
    """``mx.grad`` of a logit difference w.r.t. a steering vector through a program, in forward-equivalents."""
    yield from _skip_rows(ctx, "gradient", "raw compiled forward", "grad through the program")
    for name in ctx.available():
        m = ctx.model(name)
        im, tokens, vector = m.wrap(), m.tokens(1, 16), m.vectors(1)[0]
        layer = f"layers.{m.layers // 2}"
        with im.trace(tokens, capture="saved") as tr:
            im.module(layer).output = im.module(layer).output + mt.param("steer", vector)
            (im.output[:, -1, 1] - im.output[:, -1, 2]).save("diff")
        prog = tr.program()
        grad = mx.grad(lambda s: prog(steer=s)["diff"].sum())
        raw = mx.compile(m.module)
        timings = _compare(ctx, lambda: mx.eval(raw(tokens)), lambda: mx.eval(grad(vector)))
        yield ratio_row(SUITE, "gradient", name, shape_text(1, 16), "raw compiled forward",
                        "mx.grad of a logit difference w.r.t. a steering vector (program)", timings,
                        GRADIENT_TARGET, note="value = forward-equivalents")


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {
    "replay": replay,
    "steering_scan": steering_scan,
    "gradient": gradient,
}
