"""Invokes: K prompts written as K ``tr.invoke`` blocks of one trace, against one batched forward of them.

Cases, at the settings' shapes ``bK sT`` with ``K`` at least 2 (the K prompts have lengths ``T, T-1, T-2, T, ...``,
right-padded to ``T``; each invoke saves its last position's logits, the baseline evaluates the same batch's
logits):

``invokes_trace``    the model's forward on the padded batch, compiled as mlxterp compiles (``mx.compile`` with
                     the weights as inputs, so that edits are seen) vs a compiled trace of K invokes, recorded
                     on every call; judged where that forward takes ``FLOOR_JUDGED_S`` or more per invoke
                     (recording costs about 0.1-0.2 ms per invoke: below that, replay the program).
``invokes_program``  the same baseline vs the trace's program replayed (``prog()``), judged at every shape.
``edited_invokes``   what an edit adds to K invokes: the program of K invokes on the model vs on the model
                     edited with ``iv.scale(0.9)`` at every layer (position-wise edits that come first are
                     recorded once on the whole batch, not as a row write per invoke); the notes give the
                     same ratio for the K prompts traced as one batch.

Clock: process CPU time (``time.process_time``: the Python thread and MLX's own), which other processes on
this shared machine do not inflate as they do wall-clock time; the difference per call is in the notes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import mlx.core as mx

from mlxterp import interventions as iv

from .context import Context, shape_text
from .harness import Row, Target, compare, ratio_row
from .suite_trace import FLOOR_JUDGED_S

SUITE = "invoke"
DESCRIPTION = "K invokes of one trace (trace and program) vs one batched forward of the K prompts"

INVOKE_TARGET = Target("<=", 1.05)
BASELINE = "K prompts batched, raw compiled forward"


def configs(ctx: Context) -> Iterator[tuple[str, int, int]]:
    """The settings' (model, K, seq), K the batch and at least 2 (one prompt is a plain trace: suites trace and
    program measure it)."""
    seen = set()
    for name, batch, seq in ctx.configs():
        if (name, max(batch, 2), seq) not in seen:
            seen.add((name, max(batch, 2), seq))
            yield name, max(batch, 2), seq


def _compare(ctx: Context, baseline: Callable, candidate: Callable) -> tuple:
    s = ctx.settings
    return compare(baseline, candidate, repeats=s.repeats, warmup=s.warmup, min_time=s.min_time,
                   clock=time.process_time)


def _skip_rows(ctx: Context, case: str, baseline: str, candidate: str) -> Iterator[Row]:
    for name, reason in ctx.missing().items():
        yield Row(SUITE, case, name, "", baseline, candidate, float("nan"), skipped=reason)


def prompts(m: Any, k: int, seq: int) -> list[list[int]]:
    """K token-id prompts of lengths ``seq, seq - 1, seq - 2, seq, ...`` (at least 1)."""
    rows = m.tokens(k, seq).tolist()
    return [row[: max(1, seq - j % 3)] for j, row in enumerate(rows)]


def invoke_trace(im: Any, rows: list[list[int]]) -> tuple[Any, list]:
    """A compiled trace with one invoke per prompt, each saving its last position's logits."""
    with im.trace(compile=True, capture="saved") as tr:
        saved = []
        for row in rows:
            with tr.invoke(row):
                saved.append(im.output[:, -1].save())
    return tr, [handle.value for handle in saved]


def _setup(ctx: Context, name: str, k: int, seq: int) -> tuple[Any, list, Callable, mx.array, float]:
    """The wrapper, prompts, raw compiled forward and padded batch; checks the invokes against it."""
    m = ctx.model(name)
    im, rows = m.wrap(), prompts(m, k, seq)
    raw = mx.compile(lambda tokens: m.module(tokens), inputs=[m.module.state])  # as mlxterp compiles
    tr, saved = invoke_trace(im, rows)
    logits = raw(tr.tokens)
    want = mx.stack([logits[j, len(row) - 1] for j, row in enumerate(rows)])
    diff = mx.max(mx.abs(mx.concatenate(saved, axis=0) - want)).item()
    if not diff < 1e-4:
        raise AssertionError(f"{name}: the invokes' last logits differ from the batched forward's by {diff:.3g}")
    return im, rows, raw, tr.tokens, diff


def invokes_trace(ctx: Context) -> Iterator[Row]:
    """One batched compiled forward vs a compiled trace of K invokes (recorded on every call)."""
    yield from _skip_rows(ctx, "invokes_trace", BASELINE, "trace of K invokes")
    for name, k, seq in configs(ctx):
        im, rows, raw, tokens, diff = _setup(ctx, name, k, seq)
        timings = _compare(ctx, lambda: mx.eval(raw(tokens)), lambda: mx.eval(invoke_trace(im, rows)[1]))
        judged = timings[0].median >= FLOOR_JUDGED_S * k
        note = (f"{(timings[1].median - timings[0].median) * 1e3 / k:+.3f} ms CPU per invoke; max abs diff {diff:.1e}"
                + ("" if judged else f"; not judged: the forward is under {FLOOR_JUDGED_S * 1e3:.0f} ms per invoke "
                                     "(replay the program there)"))
        yield ratio_row(SUITE, "invokes_trace", name, shape_text(k, seq), BASELINE,
                        f"compiled trace of {k} invokes (last logits saved)", timings,
                        INVOKE_TARGET if judged else None, note=note)


def invokes_program(ctx: Context) -> Iterator[Row]:
    """One batched compiled forward vs the program of K invokes, replayed."""
    yield from _skip_rows(ctx, "invokes_program", BASELINE, "program of K invokes")
    for name, k, seq in configs(ctx):
        im, rows, raw, tokens, diff = _setup(ctx, name, k, seq)
        prog = invoke_trace(im, rows)[0].program()
        timings = _compare(ctx, lambda: mx.eval(raw(tokens)), lambda: mx.eval(prog()))
        yield ratio_row(SUITE, "invokes_program", name, shape_text(k, seq), BASELINE,
                        f"program of {k} invokes replayed (last logits saved)", timings, INVOKE_TARGET,
                        note=f"{(timings[1].median - timings[0].median) * 1e3:+.3f} ms CPU/call; "
                             f"max abs diff {diff:.1e}")


def _program(im: Any, rows: list[list[int]], tokens: Any = None) -> Any:
    """The program of K invokes (or, given ``tokens``, of the padded batch as one trace), last logits saved."""
    if tokens is None:
        return invoke_trace(im, rows)[0].program()
    with im.trace(tokens, compile=True, capture="saved") as tr:
        im.output.save()
    return tr.program()


def edited_invokes(ctx: Context) -> Iterator[Row]:
    """The program of K invokes on the model vs on the model with a position-wise edit at every layer."""
    yield from _skip_rows(ctx, "edited_invokes", "program of K invokes", "of the edited model")
    for name, k, seq in configs(ctx):
        m = ctx.model(name)
        im, rows = m.wrap(), prompts(m, k, seq)
        edited = im.edit({f"layers.{i}": iv.scale(0.9) for i in range(m.layers)})
        base, cand = _program(im, rows), _program(edited, rows)
        base_batch, cand_batch = _program(im, rows, base.tokens), _program(edited, rows, base.tokens)
        batch = _compare(ctx, lambda: mx.eval(base_batch()), lambda: mx.eval(cand_batch()))
        timings = _compare(ctx, lambda: mx.eval(base()), lambda: mx.eval(cand()))
        yield ratio_row(SUITE, "edited_invokes", name, shape_text(k, seq), "program of K invokes",
                        f"the same, the model edited with iv.scale(0.9) at all {m.layers} layers", timings,
                        INVOKE_TARGET, note=f"the same edit on the K prompts traced as one batch: "
                                            f"{batch[1].median / batch[0].median:.3f}x")


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {
    "invokes_trace": invokes_trace,
    "invokes_program": invokes_program,
    "edited_invokes": edited_invokes,
}
