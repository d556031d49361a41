"""Circuits: edge attribution, exact edge patching, faithfulness curves and direct logit attribution, against
floors measured in the same run.

The task is the induction one of the README (BOS + 10 random tokens + the first 9 again, 20 tokens; the
corrupted copy changes the 10th token's first occurrence; metric: the log-probability of the repeated token
at the last position). Every edge of the model is scored (on SmolLM2-135M: 301 senders, 481 receivers with
q/k/v inputs per head, 70,651 edges).

``circuits_eap``         ``model.edge_attribution(method="eap")`` vs one forward + backward of the prompt pair
                         (a 2-row batch, ``mx.grad`` to the input embeddings, compiled: the floor any EAP
                         needs). Target: <= 2x.
``circuits_eap_ig``      EAP-IG with 5 steps vs the same floor. Target: <= 3x.
``circuits_eap_ig_act``  EAP-IG on the activations with 2 steps (62 variants on SmolLM2) vs the same floor.
                         Informational (no target): its cost grows with layers x steps.
``circuits_patching``    ``model.edge_patching`` of the best 200 edges vs one raw compiled forward of the clean
                         prompt, called again on the same prompts (the corrupted run is kept from the first call,
                         and the prompts' common first 10 tokens run once on a KV cache). Target: <= 1.2x. The
                         floor, the raw forward of what it runs (1 row of the last 10 positions on the prefix's KV
                         cache), is in the notes.
``circuits_patching_new`` the same on a new prompt pair every call: the corrupted run first (one forward with
                         every sender's output saved), then the patched row. Informational.
``circuits_curve``       ``model.faithfulness_curve`` of 8 sizes (5 to 500 edges) vs one forward, on prompts seen
                         before (the corrupted and clean runs kept). Target: <= 3x. Its forward has the 8 circuits'
                         rows; the floor, a raw forward of 8 rows of the last 10 positions on the prefix's KV
                         cache, and the raw forward of 10 whole rows (what it ran before runs were kept) are in
                         the notes.
``circuits_dla``         ``model.direct_logit_attribution`` vs one raw forward. Target: <= 1.2x.

Clocks: values are in process CPU time (the Python thread and MLX's evaluation thread), which other processes
on a shared machine do not inflate; wall-clock ratios are in the notes. Sides rotate their order every round;
values are medians over rounds of candidate / baseline.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from mlxterp import InterpretableModel

from .context import Context
from .harness import Row, Target, rotating
from .models import Loaded

SUITE = "circuits"
DESCRIPTION = "EAP / EAP-IG vs forward + backward, edge patching, faithfulness curve and DLA vs one forward"

EAP_TARGET = Target("<=", 2.0)
EAP_IG_TARGET = Target("<=", 3.0)
PATCHING_TARGET = Target("<=", 1.2)
CURVE_TARGET = Target("<=", 3.0)
DLA_TARGET = Target("<=", 1.2)
SIZES = [5, 10, 20, 50, 100, 200, 300, 500]
N = 10  # random tokens per copy

Samples = List[Tuple[float, float]]


class Setup:
    """One model's inputs: the wrapper, the prompt pair, the metric, the raw forward and its gradient."""

    def __init__(self, m: Loaded):
        self.m = m
        self.model = InterpretableModel(m.module, tokenizer=m.tokenizer)
        rng = np.random.default_rng(0)
        low, high = (1000, 10000) if m.vocab > 10000 else (3, m.vocab)
        first = [int(t) for t in rng.integers(low, high, N)]
        bos = getattr(m.tokenizer, "bos_token_id", None) if m.tokenizer is not None else None
        head = [bos if bos is not None else 1]
        self.clean = mx.array([head + first + first[:-1]], dtype=mx.int32)
        self.corrupted = mx.array([head + first[:-1] + [int(rng.integers(low, high))] + first[:-1]], dtype=mx.int32)
        self.target = first[-1]
        self.forward = mx.compile(lambda t: m.module(t))
        self.backward = mx.compile(self._gradient)
        self._scores: Any = None

    @property
    def scores(self) -> Any:
        """The EAP-IG scores of every edge (computed once)."""
        if self._scores is None:
            self._scores = self.attribution("eap-ig")()
        return self._scores

    def _gradient(self, tokens: mx.array) -> mx.array:
        embed = self.m.module.model.embed_tokens(tokens)

        def loss(e: mx.array) -> mx.array:
            logits = self.m.module(tokens, input_embeddings=e)[:, -1]
            return (logits[:, self.target] - mx.logsumexp(logits, axis=-1)).sum()

        return mx.grad(loss)(embed)

    def raw(self, rows: int = 1) -> Callable[[], Any]:
        tokens = mx.concatenate([self.clean] * rows, axis=0)
        return lambda: mx.eval(self.forward(tokens))

    def raw_suffix(self, rows: int = 1) -> Callable[[], Any]:
        """A raw compiled forward of ``rows`` copies of the positions after the prompts' common prefix, on a KV
        cache of the prefix: what a patched forward of ``rows`` rows runs."""
        from mlxterp.circuits.prefix import PrefixCache, VariantCache

        p0 = int(np.flatnonzero(np.asarray(self.clean[0] != self.corrupted[0]))[0])
        caches = [PrefixCache() for _ in self.m.module.layers]
        mx.eval(self.m.module(self.clean[:, :p0], cache=caches))
        keys, values = [c.keys for c in caches], [c.values for c in caches]
        suffix = mx.concatenate([self.clean[:, p0:]] * rows, axis=0)

        def forward(tokens: mx.array, keys: list, values: list) -> mx.array:
            return self.m.module(tokens, cache=[VariantCache(k, v, rows) for k, v in zip(keys, values)])

        compiled = mx.compile(forward)
        return lambda: mx.eval(compiled(suffix, keys, values))

    def new_pair(self) -> Tuple[mx.array, mx.array]:
        """Another induction prompt pair of the same shape (its first difference at the same position)."""
        self._fresh = getattr(self, "_fresh", 0) + 1
        rng = np.random.default_rng(1000 + self._fresh)
        low, high = (1000, 10000) if self.m.vocab > 10000 else (3, self.m.vocab)
        first = [int(t) for t in rng.integers(low, high, N)]
        head = [int(self.clean[0, 0])]
        clean = mx.array([head + first + first[:-1]], dtype=mx.int32)
        return clean, mx.array([head + first[:-1] + [int(rng.integers(low, high))] + first[:-1]], dtype=mx.int32)

    def floor(self) -> Any:
        return mx.eval(self.backward(mx.concatenate([self.clean, self.corrupted], axis=0)))

    def circuit(self, n: int = 200) -> Any:
        return self.scores.circuit(n_edges=min(n, self.scores.graph.n_edges))

    def attribution(self, method: str, steps: int = 5) -> Callable[[], Any]:
        return lambda: self.model.edge_attribution(self.clean, self.corrupted, metric="logprob", target=self.target,
                                                   method=method, steps=steps)


def _cpu_and_wall(fn: Callable[[], Any]) -> Tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _rounds(ctx: Context, thunks: Sequence[Callable[[], Any]], m: Loaded) -> List[Samples]:
    rounds = 1 if ctx.settings.quick and m.hidden >= 512 else max(2, min(ctx.settings.repeats, 5))
    return rotating(thunks, rounds, [True] * len(thunks), _cpu_and_wall)


def _ratio(base: Samples, cand: Samples, clock: int) -> float:
    return statistics.median(c[clock] / b[clock] for b, c in zip(base, cand))


def _row(case: str, s: Setup, baseline: str, candidate: str, base: Samples, cand: Samples, target: Target,
         note: str = "") -> Row:
    shape = f"b1 s{s.clean.shape[1]}"
    wall = f"wall-clock {_ratio(base, cand, 1):.3f}x"
    mins = min(c[0] for c in cand) / min(b[0] for b in base)
    return Row(SUITE, case, s.m.name, shape, baseline, candidate, _ratio(base, cand, 0), "x", target,
               statistics.median(b[0] for b in base), statistics.median(c[0] for c in cand), mins,
               "; ".join(filter(None, [wall, note])))


def _setups(ctx: Context, case: str, baseline: str, candidate: str) -> Iterator[Any]:
    for name, reason in ctx.missing(ctx.settings.circuit_models).items():
        yield Row(SUITE, case, name, "", baseline, candidate, float("nan"), skipped=reason)
    for name in ctx.available(ctx.settings.circuit_models):
        key = ("circuits", name)
        if key not in ctx.cache:
            ctx.cache[key] = Setup(ctx.model(name))
        yield ctx.cache[key]


# -- cases -----------------------------------------------------------------------------------------------------
def circuits_eap(ctx: Context, method: str = "eap", case: str = "circuits_eap",
                 target: Optional[Target] = EAP_TARGET, steps: int = 5) -> Iterator[Row]:
    """Edge attribution of every edge vs one forward + backward of the prompt pair."""
    base, cand = "fwd+bwd of the prompt pair (2 rows)", f"edge_attribution({method!r}, all edges)"
    for s in _setups(ctx, case, base, cand):
        if isinstance(s, Row):
            yield s
            continue
        floor, candidate = _rounds(ctx, [s.floor, s.attribution(method, steps)], s.m)
        yield _row(case, s, base, cand, floor, candidate, target, f"{s.scores.graph.n_edges} edges")


def circuits_eap_ig(ctx: Context) -> Iterator[Row]:
    """EAP-IG (5 steps, one folded forward + backward) vs the same floor."""
    yield from circuits_eap(ctx, "eap-ig", "circuits_eap_ig", EAP_IG_TARGET)


def circuits_eap_ig_act(ctx: Context) -> Iterator[Row]:
    """EAP-IG on the activations (2 steps: 1 + (2L + 1) variants) vs the same floor; informational."""
    yield from circuits_eap(ctx, "eap-ig-activations", "circuits_eap_ig_act", None, steps=2)


def circuits_patching(ctx: Context) -> Iterator[Row]:
    """Exact edge patching of a 200-edge circuit vs one forward, on prompts seen before (the floor in the notes)."""
    base, cand = "raw forward (1 row)", "edge_patching(200 edges)"
    for s in _setups(ctx, "circuits_patching", base, cand):
        if isinstance(s, Row):
            yield s
            continue
        circuit = s.circuit(200)

        def patch() -> Any:
            return s.model.edge_patching(s.clean, s.corrupted, circuit, metric="logprob", target=s.target)

        one, floor, patched = _rounds(ctx, [s.raw(1), s.raw_suffix(1), patch], s.m)
        yield _row("circuits_patching", s, base, cand, one, patched, PATCHING_TARGET,
                   f"floor: raw forward of the 1 row it runs (the last {s.clean.shape[1] - _p0(s)} positions on the "
                   f"prefix's KV cache) {_ratio(one, floor, 0):.3f}x; over that floor {_ratio(floor, patched, 0):.3f}x")


def circuits_patching_new(ctx: Context) -> Iterator[Row]:
    """Exact edge patching of a 200-edge circuit on a new prompt pair every call (the corrupted run first)."""
    base, cand = "raw forward (1 row)", "edge_patching(200 edges), new prompts"
    for s in _setups(ctx, "circuits_patching_new", base, cand):
        if isinstance(s, Row):
            yield s
            continue
        circuit = s.circuit(200)

        def patch() -> Any:
            clean, corrupted = s.new_pair()
            return s.model.edge_patching(clean, corrupted, circuit, metric="logprob", target=int(clean[0, -1]))

        one, patched = _rounds(ctx, [s.raw(1), patch], s.m)
        yield _row("circuits_patching_new", s, base, cand, one, patched, None,
                   "a corrupted run (every sender's output saved) and the patched row")


def circuits_curve(ctx: Context) -> Iterator[Row]:
    """A faithfulness curve of 8 sizes in one batched forward vs one forward (the floors in the notes)."""
    base, cand = "raw forward (1 row)", f"faithfulness_curve({len(SIZES)} sizes)"
    for s in _setups(ctx, "circuits_curve", base, cand):
        if isinstance(s, Row):
            yield s
            continue
        scores = s.scores
        sizes = [min(n, scores.graph.n_edges) for n in SIZES]
        rows = len(sizes)

        def curve() -> Any:
            return s.model.faithfulness_curve(scores, s.clean, s.corrupted, sizes=sizes, metric="logprob",
                                              target=s.target)

        one, floor, whole, curved = _rounds(ctx, [s.raw(1), s.raw_suffix(rows), s.raw(rows + 2), curve], s.m)
        yield _row("circuits_curve", s, base, cand, one, curved, CURVE_TARGET,
                   f"floor: raw forward of the {rows} rows it runs (the last {s.clean.shape[1] - _p0(s)} positions on "
                   f"the prefix's KV cache) {_ratio(one, floor, 0):.3f}x; over that floor "
                   f"{_ratio(floor, curved, 0):.3f}x; raw forward of {rows + 2} whole rows "
                   f"{_ratio(one, whole, 0):.3f}x")


def _p0(s: Setup) -> int:
    return int(np.flatnonzero(np.asarray(s.clean[0] != s.corrupted[0]))[0])


def circuits_dla(ctx: Context) -> Iterator[Row]:
    """Direct logit attribution (every head, MLP and the embedding) vs one forward."""
    base, cand = "raw forward (1 row)", "direct_logit_attribution"
    for s in _setups(ctx, "circuits_dla", base, cand):
        if isinstance(s, Row):
            yield s
            continue

        def dla() -> Any:
            return s.model.direct_logit_attribution(s.clean, target=s.target)

        one, attributed = _rounds(ctx, [s.raw(1), dla], s.m)
        yield _row("circuits_dla", s, base, cand, one, attributed, DLA_TARGET)


CASES = {
    "circuits_eap": circuits_eap,
    "circuits_eap_ig": circuits_eap_ig,
    "circuits_eap_ig_act": circuits_eap_ig_act,
    "circuits_patching": circuits_patching,
    "circuits_patching_new": circuits_patching_new,
    "circuits_curve": circuits_curve,
    "circuits_dla": circuits_dla,
}
