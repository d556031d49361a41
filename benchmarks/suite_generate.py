"""Generation with interventions against mlx-lm's own generation (issue 11's targets).

Every generation makes exactly ``gen_tokens`` new tokens (48; a quarter of that on models of hidden >= 512,
where a CPU makes a few tokens per second): mlx-lm runs with a copy of the tokenizer whose EOS set is
empty, mlxterp with ``ignore_eos=True``. The prompt is "Once upon a time" (random ids on models without a
tokenizer). The steering intervention adds a vector to layer ``L/2``'s output at the newest token of every
step (``model.layers[L // 2].output[:, -1] += v``); mlxterp runs its default mode (``compile="auto"``).

``generate_steering``    tokens/s of steered greedy generation vs plain ``mlx_lm.generate`` of the same model
                         and length (throughput ratio: baseline time / candidate time). Target: >= 0.9x.
``generate_variants``    8 steering vectors as one batch of 8 rows vs 8 sequential steered generations: that
                         speed-up divided by the one ``mlx_lm.batch_generate`` (8 copies of the prompt) gets
                         over 8 sequential ``mlx_lm.generate`` calls; both speed-ups in the notes.
                         Target: >= 0.9.
``generate_saves``       steered generation that also saves layer ``L/2``'s newest-token output at every step vs
                         the same without the save (throughput ratio). Target: >= 0.95x (saves cost <= 5%).

Clocks: the value is measured in process CPU time (``time.process_time``: the Python thread and MLX's
evaluation thread together), which other processes on a shared machine do not inflate; the wall-clock
ratio of the same calls is in the notes. Sides alternate call by call (the four sides of
``generate_variants`` rotate their order every round); values are medians over rounds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Iterator, Sequence

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import batch_generate, generate_step
from mlx_lm.tokenizer_utils import TokenizerWrapper

from mlxterp import InterpretableModel

from .context import Context
from .harness import Row, Target, rotating
from .models import Loaded

SUITE = "generate"
DESCRIPTION = "steered generation vs mlx_lm.generate, 8 steering variants in one batch vs batch_generate, saves"

THROUGHPUT_TARGET = Target(">=", 0.9)
VARIANTS_TARGET = Target(">=", 0.9)
SAVES_TARGET = Target(">=", 0.95)
VARIANTS = 8
PROMPT = "Once upon a time"


# -- helpers ---------------------------------------------------------------------------------------------------
class Setup:
    """One model's generation benchmark inputs: wrapper, prompt ids, steering vectors, token count."""

    def __init__(self, ctx: Context, m: Loaded):
        self.m = m
        self.model = InterpretableModel(m.module, tokenizer=m.tokenizer)
        self.ids = m.tokenizer.encode(PROMPT) if m.tokenizer is not None else m.tokens(1, 5).tolist()[0]
        self.tokens = ctx.settings.gen_tokens if m.hidden < 512 else max(4, ctx.settings.gen_tokens // 4)
        self.layer = m.layers // 2
        self.vectors = mx.stack(m.vectors(VARIANTS, scale=0.05))
        self.tokenizer = _without_eos(m)

    def steered(self, vector: mx.array, rows: int = 1, save: bool = False) -> Callable[[], Any]:
        """A thunk: one steered generation of ``rows`` rows (``vector`` is ``(hidden,)`` or ``(rows, hidden)``)."""
        model, layer, n = self.model, self.layer, self.tokens
        prompt = [self.ids] * rows if rows > 1 else self.ids

        def run() -> Any:
            with model.generate(prompt, n, ignore_eos=True) as gen:
                out = model.layers[layer].output
                out[:, -1] = out[:, -1] + vector
                if save:
                    model.layers[layer].output[:, -1].save()
            return _check_length(gen.tokens if rows > 1 else [gen.tokens], n)

        return run

    def mlx_generate(self) -> Any:
        """``mlx_lm.generate`` (its token loop ``generate_step`` on a model without a tokenizer)."""
        if self.tokenizer is None:
            steps = generate_step(mx.array(self.ids), self.m.module, max_tokens=self.tokens)
            return _check_length([[int(t) for t, _ in steps]], self.tokens)
        return mlx_lm.generate(self.m.module, self.tokenizer, self.ids, max_tokens=self.tokens)

    def mlx_batch(self) -> Any:
        tokenizer = self.tokenizer or _NoTokenizer()
        out = batch_generate(self.m.module, tokenizer, [self.ids] * VARIANTS, max_tokens=self.tokens,
                             return_token_ids=True)
        return _check_length(out.token_ids, self.tokens)


class _NoTokenizer:
    """What ``batch_generate`` reads of a tokenizer, for models without one: no EOS, empty text."""

    eos_token_ids: tuple = ()

    def decode(self, ids: Sequence[int]) -> str:
        return ""


def _without_eos(m: Loaded) -> Any:
    """A tokenizer for mlx-lm that never ends a row early, so both sides make the same number of tokens."""
    if m.tokenizer is None:
        return None
    base = m.tokenizer._tokenizer if isinstance(m.tokenizer, TokenizerWrapper) else m.tokenizer
    wrapper = TokenizerWrapper(base)
    wrapper._eos_token_ids = set()  # a benchmark shim: mlx-lm offers no "ignore EOS" switch
    return wrapper


def _check_length(rows: Sequence[Sequence[int]], n: int) -> Any:
    if any(len(r) != n for r in rows):
        raise RuntimeError(f"a generation made {[len(r) for r in rows]} tokens, not {n}: the sides would differ")
    return rows


def _cpu_and_wall(fn: Callable[[], Any]) -> tuple[float, float]:
    """``(cpu seconds, wall seconds)`` of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _rounds(thunks: Sequence[Callable[[], Any]], rounds: int) -> list[list[tuple[float, float]]]:
    """``(cpu, wall)`` seconds of each thunk per round (one untimed call each first), order rotating."""
    return rotating(thunks, rounds, [True] * len(thunks), _cpu_and_wall)


def _ratio(base: list[tuple[float, float]], cand: list[tuple[float, float]], clock: int) -> float:
    """Median over rounds of baseline time / candidate time on one clock (0: cpu, 1: wall)."""
    return statistics.median(b[clock] / c[clock] for b, c in zip(base, cand))


def _median(samples: list[tuple[float, float]], clock: int) -> float:
    return statistics.median(s[clock] for s in samples)


def _throughput_row(case: str, s: Setup, baseline: str, candidate: str, samples: list, target: Target) -> Row:
    base, cand = samples
    shape = f"b1 {s.tokens} tok"
    note = f"wall-clock ratio {_ratio(base, cand, 1):.3f}x; tokens/s (cpu) {s.tokens / _median(cand, 0):.1f} " \
           f"vs {s.tokens / _median(base, 0):.1f}"
    mins = min(b[0] for b in base) / min(c[0] for c in cand)
    return Row(SUITE, case, s.m.name, shape, baseline, candidate, _ratio(base, cand, 0), "x throughput", target,
               _median(base, 0), _median(cand, 0), mins, note)


def _models(ctx: Context) -> list[str]:
    return ctx.available(ctx.settings.generate_models)


def _skips(ctx: Context, case: str, baseline: str, candidate: str) -> Iterator[Row]:
    for name, reason in ctx.missing(ctx.settings.generate_models).items():
        yield Row(SUITE, case, name, "", baseline, candidate, float("nan"), skipped=reason)


def _repeats(ctx: Context, s: Setup, light: int) -> int:
    """Rounds: the settings' repeats on small models, 2 on large ones (seconds per generation), 1 quick."""
    return 1 if ctx.settings.quick and s.m.hidden >= 512 else light if s.m.hidden < 512 else 2


# -- cases -----------------------------------------------------------------------------------------------------
def generate_steering(ctx: Context) -> Iterator[Row]:
    """Steered greedy generation vs plain ``mlx_lm.generate``."""
    base, cand = "mlx_lm.generate (plain)", "model.generate, steer at L/2 every step"
    yield from _skips(ctx, "generate_steering", base, cand)
    for name in _models(ctx):
        s = Setup(ctx, ctx.model(name))
        samples = _rounds([s.mlx_generate, s.steered(s.vectors[0])], _repeats(ctx, s, ctx.settings.repeats))
        yield _throughput_row("generate_steering", s, base, cand, samples, THROUGHPUT_TARGET)


def generate_variants(ctx: Context) -> Iterator[Row]:
    """8 steering variants in one batch: our batching speed-up against mlx-lm's."""
    base, cand = "batch_generate / 8 x generate", f"{VARIANTS} variants in one batch / 8 steered generations"
    yield from _skips(ctx, "generate_variants", base, cand)
    for name in _models(ctx):
        s = Setup(ctx, ctx.model(name))

        def mlx_sequential() -> None:
            for _ in range(VARIANTS):
                s.mlx_generate()

        singles = [s.steered(s.vectors[i]) for i in range(VARIANTS)]

        def ours_sequential() -> None:
            for run in singles:
                run()

        rounds = _repeats(ctx, s, max(2, ctx.settings.repeats // 2))
        mlx_seq, mlx_batch, ours_seq, ours_batch = _rounds(
            [mlx_sequential, s.mlx_batch, ours_sequential, s.steered(s.vectors, rows=VARIANTS)], rounds)
        theirs, ours = (_ratio(a, b, 0) for a, b in ((mlx_seq, mlx_batch), (ours_seq, ours_batch)))
        wall = _ratio(ours_seq, ours_batch, 1) / _ratio(mlx_seq, mlx_batch, 1)
        note = (f"speed-up ours {ours:.2f}x, mlx-lm {theirs:.2f}x (cpu); wall-clock: ours "
                f"{_ratio(ours_seq, ours_batch, 1):.2f}x, mlx-lm {_ratio(mlx_seq, mlx_batch, 1):.2f}x, "
                f"ratio {wall:.3f}")
        yield Row(SUITE, "generate_variants", name, f"b{VARIANTS} {s.tokens} tok", base, cand, ours / theirs,
                  "x of mlx-lm's", VARIANTS_TARGET, _median(mlx_batch, 0), _median(ours_batch, 0), float("nan"),
                  note)


def generate_saves(ctx: Context) -> Iterator[Row]:
    """Per-step saves of one layer: their cost in tokens/s."""
    base, cand = "steered generation", "the same + a per-step save of layer L/2"
    yield from _skips(ctx, "generate_saves", base, cand)
    for name in _models(ctx):
        s = Setup(ctx, ctx.model(name))
        samples = _rounds([s.steered(s.vectors[0]), s.steered(s.vectors[0], save=True)],
                          _repeats(ctx, s, ctx.settings.repeats))
        yield _throughput_row("generate_saves", s, base, cand, samples, SAVES_TARGET)


CASES = {
    "generate_steering": generate_steering,
    "generate_variants": generate_variants,
    "generate_saves": generate_saves,
}
