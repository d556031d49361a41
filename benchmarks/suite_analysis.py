"""Analysis helpers against the loops of raw forwards they replace (issue 4's targets).

Every baseline is written with raw mlx / mlx-lm calls (a hand-written layer loop, no mlxterp trace) and
follows the reference project's algorithm; each candidate is the mlxterp call a user would make. Prompts
are ``analysis_seq`` (32) random tokens; the corrupted prompt differs from the clean one at two positions
(a quarter of the way in, and the last token). Speedups and throughput ratios are baseline time /
candidate time (median over interleaved pairs); the loops taking seconds run 3 pairs (1 with --quick).

``activation_patching``     ``model.activation_patching(component="mlp")`` over all layers vs the loop of
                            ``2 + 2L`` forwards (clean, corrupted, then per layer a clean forward capturing
                            the component and a patched corrupted forward); same recoveries to 1e-3
                            percentage points (max abs diff in the notes). Target: >= 5x faster.
``patching_grid``           ``model.patching_grid(component="output")`` (every layer x position) vs
                            ``2 + L*T`` forwards (clean capturing every layer, corrupted, one forward per
                            cell replacing one position). Target: >= 5x faster.
``batch_get_activations``   ``batch_get_activations`` of every layer at the last token of ``prompts``
                            (1,000) prompts of varied length vs raw eager batched forwards over the same
                            padded chunks (throughput ratio; raw ``mx.compile`` forwards as information).
                            Target: >= 0.9x throughput.
``attribution_patching``    ``model.attribution_patching`` (all layers x positions) in forward-equivalents:
                            its time / one raw eager forward of the clean prompt. Target: <= 3.
``head_patching``           ``model.head_patching`` (every layer x head) vs loops of raw forwards in which
                            an attention's output projection reads one head's clean columns (a wrapper
                            module, no mlxterp): the reference algorithm of ``2 + 2LH`` forwards (per cell
                            a clean forward capturing the head and a patched one, as the
                            ``activation_patching`` row), judged; and ``2 + LH`` forwards (the clean heads
                            captured once), informational. Same recoveries to 1e-3 pp. Target: >= 5x.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import create_attention_mask

from mlxterp.activations import batch_get_activations, bucket_length
from mlxterp.analysis.sweep import shared_prefix

from .context import Context, shape_text
from .harness import Row, Target, Timing, compare, rotating
from .models import Loaded

SUITE = "analysis"
DESCRIPTION = ("activation patching, layers x positions grid, batch_get_activations and attribution patching vs "
               "loops of raw forwards")

SPEEDUP_TARGET = Target(">=", 5.0)
THROUGHPUT_TARGET = Target(">=", 0.9)
ATTRIBUTION_TARGET = Target("<=", 3.0)
SAME_NUMBERS_PP = 1e-3  # percentage points
BATCH_SIZE = 8  # batch_get_activations' default


# -- the raw baseline: a hand-written forward of an mlx_lm llama ----------------------------------------------
class RawLlama:
    """The forward of an mlx_lm llama written out with raw mlx-lm calls, with optional per-layer capture and
    replacement of one component (``"output"``: the layer's output; ``"mlp"``: the MLP's output)."""

    def __init__(self, module: Any):
        self.module = module
        self.inner = module.model
        self.tied = bool(getattr(module.args, "tie_word_embeddings", False)) or not hasattr(module, "lm_head")

    def __call__(self, tokens: mx.array, component: str = "output", capture: Optional[Dict[int, mx.array]] = None,
                 patch: Optional[Dict[int, Callable[[mx.array], mx.array]]] = None) -> mx.array:
        inner = self.inner
        h = inner.embed_tokens(tokens)
        mask = create_attention_mask(h, None)
        for i, block in enumerate(inner.layers):
            if component == "output":
                out = block(h, mask)
            else:
                h = h + block.self_attn(block.input_layernorm(h), mask)
                out = block.mlp(block.post_attention_layernorm(h))
            if capture is not None:
                capture[i] = out
            if patch is not None and i in patch:
                out = patch[i](out)
            h = out if component == "output" else h + out
        h = inner.norm(h)
        return inner.embed_tokens.as_linear(h) if self.tied else self.module.lm_head(h)


def _last(logits: mx.array, *extra: mx.array) -> np.ndarray:
    """The whole forward evaluated (as the reference evaluates its saved output), last position's logits."""
    mx.eval(logits, *extra)
    return np.array(logits[0, -1].astype(mx.float32), dtype=np.float64)


def _l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def loop_patching(raw: RawLlama, clean: mx.array, corrupted: mx.array, component: str) -> Dict[int, float]:
    """The reference algorithm: clean and corrupted forwards, then per layer a clean forward capturing the
    component and a corrupted forward with it replaced (``2 + 2L`` forwards)."""
    clean_logits = _last(raw(clean))
    d0 = _l2(_last(raw(corrupted)), clean_logits)
    out = {}
    for layer in range(len(raw.inner.layers)):
        acts: Dict[int, mx.array] = {}
        logits = raw(clean, component, capture=acts)
        mx.eval(logits, acts[layer])
        patched = _last(raw(corrupted, component, patch={layer: lambda _, a=acts[layer]: a}))
        out[layer] = (d0 - _l2(patched, clean_logits)) / d0 * 100
    return out


def loop_grid(raw: RawLlama, clean: mx.array, corrupted: mx.array) -> np.ndarray:
    """``2 + L*T`` forwards: clean (capturing every layer's output), corrupted, one forward per (layer, position)
    replacing that position of the layer's output with the clean value."""
    acts: Dict[int, mx.array] = {}
    clean_logits = _last(raw(clean, capture=acts), *acts.values())
    d0 = _l2(_last(raw(corrupted)), clean_logits)
    seq = clean.shape[1]
    masks = [(mx.arange(seq) == p)[None, :, None] for p in range(seq)]
    grid = np.zeros((len(acts), seq))
    for layer, act in acts.items():
        for p in range(seq):
            patched = _last(raw(corrupted, patch={layer: lambda out, a=act, m=masks[p]: mx.where(m, a, out)}))
            grid[layer, p] = (d0 - _l2(patched, clean_logits)) / d0 * 100
    return grid


# -- helpers ---------------------------------------------------------------------------------------------------
def prompt_pair(m: Loaded, seq: int) -> tuple[mx.array, mx.array]:
    """A random clean prompt ``(1, seq)`` and a corrupted copy differing at two positions."""
    clean = m.tokens(1, seq, seed=7)
    ids = np.array(clean)
    for p in (seq // 4, seq - 1):
        ids[0, p] = 3 + (int(ids[0, p]) - 3 + 1 + p) % (m.vocab - 3)
    corrupted = mx.array(ids)
    mx.eval(corrupted)
    return clean, corrupted


def _skip_rows(ctx: Context, case: str, baseline: str, candidate: str) -> Iterator[Row]:
    for name, reason in ctx.missing().items():
        yield Row(SUITE, case, name, "", baseline, candidate, float("nan"), skipped=reason)


def _compare(ctx: Context, baseline: Callable, candidate: Callable, heavy: bool = False) -> tuple[Timing, Timing]:
    """Interleaved timings; ``heavy`` comparisons (seconds per call) run the minimum number of repeats."""
    s = ctx.settings
    if heavy:
        return compare(baseline, candidate, repeats=1 if s.quick else min(s.repeats, 3), warmup=min(s.warmup, 1),
                       min_time=0.0)
    return compare(baseline, candidate, repeats=s.repeats, warmup=s.warmup, min_time=s.min_time)


def compare_rotating(thunks: Sequence[Callable[[], Any]], rounds: int, warm: Sequence[bool]) -> List[Timing]:
    """Timings of several thunks, one call each per round in an order rotated every round (so drift hits
    every side alike); ``warm[i]``: give thunk ``i`` one untimed call first (compiled sides)."""
    return [Timing(x) for x in rotating(thunks, rounds, warm)]


def inverse_row(case: str, model: str, shape: str, baseline: str, candidate: str, timings: tuple[Timing, Timing],
                unit: str, target: Optional[Target], note: str = "") -> Row:
    """A row whose value is baseline time / candidate time (a speedup or a throughput ratio): the median over
    back-to-back pairs, and the same ratio of the fastest calls in the min-ratio column."""
    base, cand = timings
    value = statistics.median(b / c for b, c in zip(base.samples, cand.samples))
    return Row(SUITE, case, model, shape, baseline, candidate, value, unit, target, base.median, cand.median,
               base.min / cand.min, note)


def _patching_setup(ctx: Context, name: str, seq: int) -> tuple:
    """Model, fresh wrapper, raw reference forward and a prompt pair for a patching comparison."""
    m = ctx.model(name)
    return (m, m.wrap(), RawLlama(m.module)) + tuple(prompt_pair(m, seq))


def _patching_row(case: str, name: str, seq: int, forwards: int, candidate: str, timings: tuple, diff: float,
                  note: str = "") -> Row:
    """A speedup row against the loop of ``forwards`` raw forwards; it fails if the recoveries differ."""
    row = inverse_row(case, name, shape_text(1, seq), f"loop of {forwards} raw forwards", candidate, timings,
                      "x faster", SPEEDUP_TARGET, note=f"max |recovery diff| {diff:.1e} pp{note}")
    if not diff <= SAME_NUMBERS_PP:
        row.failures.append(f"recoveries differ by {diff:.1e} pp (> {SAME_NUMBERS_PP:g})")
    return row


# -- cases -----------------------------------------------------------------------------------------------------
def activation_patching(ctx: Context) -> Iterator[Row]:
    """``activation_patching`` (all layers, mlp) vs the reference's ``2 + 2L`` forwards."""
    yield from _skip_rows(ctx, "activation_patching", "loop", "activation_patching")
    seq = ctx.settings.analysis_seq
    for name in ctx.available():
        m, im, raw, clean, corrupted = _patching_setup(ctx, name, seq)
        last: Dict[str, Any] = {}
        timings = _compare(ctx, lambda: last.update(want=loop_patching(raw, clean, corrupted, "mlp")),
                           lambda: last.update(got=im.activation_patching(clean, corrupted, component="mlp")))
        want, got = last["want"], last["got"]
        diff = max(abs(got[k] - want[k]) for k in want)
        yield _patching_row("activation_patching", name, seq, 2 + 2 * m.layers,
                            f"activation_patching (mlp, {m.layers} layers)", timings, diff)


def patching_grid(ctx: Context) -> Iterator[Row]:
    """``patching_grid`` (output, every layer x position) vs ``2 + L*T`` raw forwards."""
    yield from _skip_rows(ctx, "patching_grid", "loop", "patching_grid")
    seq = ctx.settings.analysis_seq
    for name in ctx.available():
        m, im, raw, clean, corrupted = _patching_setup(ctx, name, seq)
        last: Dict[str, Any] = {}
        timings = _compare(ctx, lambda: last.update(want=loop_grid(raw, clean, corrupted)),
                           lambda: last.update(got=im.patching_grid(clean, corrupted, component="output")),
                           heavy=True)
        diff = float(np.max(np.abs(last["got"].grid - last["want"])))
        prefix = shared_prefix(mx.concatenate([clean, corrupted]))
        yield _patching_row("patching_grid", name, seq, 2 + m.layers * seq,
                            f"patching_grid (output, {m.layers}x{seq} cells)", timings, diff,
                            f"; cells before the first difference (position {prefix}) not run")


def _prompts(m: Loaded, n: int, max_len: int) -> List[List[int]]:
    """``n`` random token-id prompts of lengths ``max_len / 4 .. max_len``."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(max(2, max_len // 4), max_len + 1, size=n)
    return [rng.integers(3, m.vocab, size=int(k)).tolist() for k in lengths]


def _chunks(prompts: List[List[int]], pad_id: int, batch_size: int = BATCH_SIZE) -> List[mx.array]:
    """The padded token arrays ``batch_get_activations`` runs: prompts sorted by length, ``batch_size`` per
    chunk, right-padded to the bucketed width and a power-of-two height."""
    lengths = [len(p) for p in prompts]
    order = np.argsort(np.asarray(lengths), kind="stable")
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = order[start:start + batch_size]
        height = min(batch_size, 1 << max(len(ids) - 1, 0).bit_length())
        tokens = np.full((height, bucket_length(max(lengths[j] for j in ids))), pad_id, dtype=np.int32)
        for r, j in enumerate(ids):
            tokens[r, :lengths[j]] = prompts[j]
        out.append(mx.array(tokens))
    mx.eval(out)
    return out


def batch_activations(ctx: Context) -> Iterator[Row]:
    """``batch_get_activations`` (every layer, last token) vs raw batched forwards over the same chunks."""
    yield from _skip_rows(ctx, "batch_get_activations", "raw forwards", "batch_get_activations")
    n, seq = ctx.settings.prompts, ctx.settings.analysis_seq
    for name in ctx.available():
        m = ctx.model(name)
        im = m.wrap()
        prompts = _prompts(m, n, seq)
        chunks = _chunks(prompts, im._pad_id())
        compiled = mx.compile(m.module)

        def eager() -> None:
            for tokens in chunks:
                mx.eval(m.module(tokens))

        def raw_compiled() -> None:
            for tokens in chunks:
                mx.eval(compiled(tokens))

        def candidate() -> None:
            mx.eval(list(batch_get_activations(im, prompts, progress=False).values()))

        label = f"batch_get_activations ({n} prompts, {m.layers} layers, last token)"
        shape = f"b{BATCH_SIZE} s<={seq}"
        rounds = 1 if ctx.settings.quick else max(1, min(ctx.settings.repeats, 2))
        base, cand, comp = compare_rotating((eager, candidate, raw_compiled), rounds, warm=(False, True, True))
        yield inverse_row("batch_get_activations", name, shape, f"raw eager forwards ({len(chunks)} chunks)", label,
                          (base, cand), "x throughput", THROUGHPUT_TARGET,
                          note=f"{n / cand.median:.0f} prompts/s; {rounds} round{'s' if rounds > 1 else ''}")
        yield inverse_row("batch_get_activations", name, shape, f"raw mx.compile forwards ({len(chunks)} chunks)",
                          label, (comp, cand), "x throughput", None)


def attribution_patching(ctx: Context) -> Iterator[Row]:
    """``attribution_patching`` (output, all layers x positions) in forward-equivalents."""
    yield from _skip_rows(ctx, "attribution_patching", "raw forward", "attribution_patching")
    seq = ctx.settings.analysis_seq
    for name in ctx.available():
        m = ctx.model(name)
        im = m.wrap()
        clean, corrupted = prompt_pair(m, seq)
        timings = _compare(ctx, lambda: mx.eval(m.module(clean)),
                           lambda: im.attribution_patching(clean, corrupted))
        base, cand = timings
        value = statistics.median(c / b for b, c in zip(base.samples, cand.samples))
        yield Row(SUITE, "attribution_patching", name, shape_text(1, seq), "one raw eager forward (same prompt)",
                  f"attribution_patching (output, {m.layers}x{seq} cells)", value, "fwd", ATTRIBUTION_TARGET,
                  base.median, cand.median, cand.min / base.min)


class _HeadsTap(nn.Module):
    """An output projection whose input (the heads, concatenated) goes through ``fn`` first."""

    def __init__(self, inner: nn.Module, fn: Callable[[mx.array], mx.array]):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "fn", fn)

    def __call__(self, x: mx.array) -> mx.array:
        return self.inner(self.fn(x))


def _tapped(module: Any, tokens: mx.array, fns: Dict[int, Callable[[mx.array], mx.array]]) -> np.ndarray:
    """Last-position logits of a raw forward with layer ``i``'s ``o_proj`` input mapped by ``fns[i]``."""
    attns = [module.model.layers[i].self_attn for i in fns]
    originals = [a.o_proj for a in attns]
    try:
        for a, fn in zip(attns, fns.values()):
            a.o_proj = _HeadsTap(a.o_proj, fn)
        return _last(module(tokens))
    finally:
        for a, o in zip(attns, originals):
            a.o_proj = o


def loop_heads(module: Any, clean: mx.array, corrupted: mx.array, per_cell_clean: bool) -> np.ndarray:
    """Head patching (l2) by raw forwards: ``2 + 2LH`` with a clean capturing forward per cell (the reference
    algorithm), else ``2 + LH``."""
    layers, heads = len(module.model.layers), module.args.num_attention_heads
    acts: Dict[int, mx.array] = {}
    capture = {i: (lambda x, i=i: acts.setdefault(i, x)) for i in range(layers)}
    clean_logits = _tapped(module, clean, capture)
    d0 = _l2(_tapped(module, corrupted, {}), clean_logits)
    width = acts[0].shape[-1] // heads
    grid = np.zeros((layers, heads))
    for i in range(layers):
        for h in range(heads):
            if per_cell_clean:
                acts.clear()
                _tapped(module, clean, {i: capture[i]})
            mask = mx.arange(acts[i].shape[-1]) // width == h
            patched = _tapped(module, corrupted, {i: lambda x, a=acts[i], m=mask: mx.where(m, a, x)})
            grid[i, h] = (d0 - _l2(patched, clean_logits)) / d0 * 100
    return grid


def head_patching(ctx: Context) -> Iterator[Row]:
    """``head_patching`` (every layer x head) vs the loops of ``2 + 2LH`` and ``2 + LH`` raw forwards."""
    yield from _skip_rows(ctx, "head_patching", "loop", "head_patching")
    seq = ctx.settings.analysis_seq
    for name in ctx.available():
        m, im, _, clean, corrupted = _patching_setup(ctx, name, seq)
        cells = m.layers * m.module.args.num_attention_heads
        found: Dict[str, Any] = {}
        thunks = (lambda: found.update(reference=loop_heads(m.module, clean, corrupted, True)),
                  lambda: found.update(once=loop_heads(m.module, clean, corrupted, False)),
                  lambda: found.update(got=im.head_patching(clean, corrupted).grid))
        rounds = 1 if ctx.settings.quick else max(1, min(ctx.settings.repeats, 3))
        reference, once, cand = compare_rotating(thunks, rounds, warm=(False, False, True))
        diff = float(max(np.max(np.abs(found["got"] - found[k])) for k in ("reference", "once")))
        label = f"head_patching ({m.layers}x{cells // m.layers} heads)"
        yield _patching_row("head_patching", name, seq, 2 + 2 * cells, label, (reference, cand), diff)
        row = _patching_row("head_patching", name, seq, 2 + cells, label, (once, cand), diff,
                            "; the clean heads captured once")
        row.target = None
        yield row


CASES: dict[str, Callable[[Context], Iterable[Row]]] = {
    "activation_patching": activation_patching,
    "patching_grid": patching_grid,
    "batch_get_activations": batch_activations,
    "attribution_patching": attribution_patching,
    "head_patching": head_patching,
}
