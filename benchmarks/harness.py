"""Timing and the results table.

Every ratio compares a candidate with its baseline measured in the same run, interleaved (A B, B A, ...)
so that drift and noise from other processes hit both sides alike. Each side gets warm-up calls first
(the first compiled call traces and may run g++), and every timed call evaluates its results inside the
timed region. A ratio is the median over repeats of candidate / baseline of back-to-back pairs; the ratio
of the two minimums is reported beside it as the least noisy estimate on a busy machine.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from typing import Any, Callable, Optional, Sequence

Thunk = Callable[[], Any]


@dataclasses.dataclass
class Timing:
    """Seconds of repeated calls of one function."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (a noise indicator)."""
        if len(self.samples) < 4:
            return math.nan
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / self.median


def timed(fn: Thunk, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one call of ``fn`` takes (``fn`` must evaluate its own results)."""
    start = clock()
    fn()
    return clock() - start


def compare(baseline: Thunk, candidate: Thunk, *, repeats: int, warmup: int = 2, min_time: float = 0.0,
            max_repeats: int = 400, clock: Callable[[], float] = time.perf_counter) -> tuple[Timing, Timing]:
    """Interleaved timings of ``baseline`` and ``candidate``.

    Args:
        repeats: at least this many timed calls of each.
        warmup: untimed calls of each first.
        min_time: keep repeating (up to ``max_repeats``) until both sides together took this long.
        clock: wall clock by default; ``time.thread_time`` counts only this thread's CPU time (Python work),
            which waiting for other processes on a shared machine does not inflate.
    """
    for _ in range(warmup):
        baseline()
        candidate()
    base, cand = [], []
    gc.collect()
    gc.disable()  # a collection inside one side's timed call would bias that side
    try:
        spent, i = 0.0, 0
        while i < repeats or (spent < min_time and i < max_repeats):
            pair = ((baseline, base), (candidate, cand)) if i % 2 == 0 else ((candidate, cand), (baseline, base))
            for fn, samples in pair:
                samples.append(timed(fn, clock))
                spent += samples[-1]
            i += 1
    finally:
        gc.enable()
    return Timing(base), Timing(cand)


def rotating(thunks: Sequence[Thunk], rounds: int, warm: Sequence[bool],
             measure: Callable[[Thunk], Any] = timed) -> list[list[Any]]:
    """``measure(thunk)`` of several thunks, one call each per round in an order rotated every round (so
    drift hits every side alike); ``warm[i]``: give thunk ``i`` one untimed call first (compiled sides)."""
    for fn, w in zip(thunks, warm):
        if w:
            fn()
    samples: list[list[Any]] = [[] for _ in thunks]
    gc.collect()
    gc.disable()  # a collection inside one side's timed call would bias that side
    try:
        for r in range(rounds):
            for k in range(len(thunks)):
                i = (k + r) % len(thunks)
                samples[i].append(measure(thunks[i]))
    finally:
        gc.enable()
    return samples


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal for a row's value, e.g. ``Target("<=", 1.3)`` or ``Target(">=", 0.9)`` (a throughput ratio);
    ``None`` rows are informational."""

    op: str
    bound: float

    def check(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return {"<=": value <= self.bound, "<": value < self.bound, "==": value == self.bound,
                ">=": value >= self.bound, ">": value > self.bound}[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclasses.dataclass
class Row:
    """One result line: a ratio (candidate / baseline, unit ``"x"``) or another metric (count, ms).

    ``baseline_s``/``candidate_s`` are the median seconds behind a ratio, printed beside it.
    """

    suite: str
    case: str
    model: str
    shape: str
    baseline: str
    candidate: str
    value: float
    unit: str = "x"
    target: Optional[Target] = None
    baseline_s: float = math.nan
    candidate_s: float = math.nan
    min_ratio: float = math.nan  # min(candidate) / min(baseline): the least noisy estimate on a busy machine
    note: str = ""
    skipped: str = ""
    failures: list[str] = dataclasses.field(default_factory=list)  # extra checks that failed (e.g. retraces)

    @property
    def status(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.failures:
            return "FAIL"
        if self.target is None:
            return "info"
        return "PASS" if self.target.check(self.value) else "FAIL"

    def value_text(self) -> str:
        if self.skipped:
            return "-"
        if self.unit == "x":  # three decimals: a judged 1.052x must not print as a failing "1.05x"
            return f"{self.value:.3f}x"
        if self.unit == "ms":
            return f"{self.value:.3f} ms"
        if self.unit.startswith("x "):  # a ratio read another way: "x faster", "x throughput"
            return f"{self.value:.2f}{self.unit}"
        if not float(self.value).is_integer():
            return f"{self.value:.2f} {self.unit}"
        return f"{self.value:g} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["target"] = str(self.target) if self.target else None
        out["status"] = self.status
        return out


def paired_ratio(base: Timing, cand: Timing) -> float:
    """Median over repeats of candidate / baseline, each pair timed back to back (so a slow phase of a busy
    machine hits both sides of a pair); the ratio of medians when the samples are not paired."""
    if len(base.samples) != len(cand.samples) or not base.samples:
        return cand.median / base.median
    return statistics.median(c / b for b, c in zip(base.samples, cand.samples))


def ratio_row(suite: str, case: str, model: str, shape: str, baseline: str, candidate: str,
              timings: tuple[Timing, Timing], target: Optional[Target] = None, note: str = "") -> Row:
    """A row whose value is the median paired ratio candidate / baseline (see :func:`paired_ratio`)."""
    base, cand = timings
    return Row(suite, case, model, shape, baseline, candidate, paired_ratio(base, cand), "x", target,
               base.median, cand.median, cand.min / base.min, note)


def _ms(seconds: float) -> str:
    return "" if math.isnan(seconds) else f"{seconds * 1e3:.2f}"


COLUMNS = ("case", "model", "shape", "candidate vs baseline", "base ms", "cand ms", "value", "min ratio", "target",
           "status", "notes")


def format_table(rows: list[Row]) -> str:
    """A plain-text table (also valid Markdown) of all rows."""
    cells = [(r.case, r.model, r.shape, f"{r.candidate} vs {r.baseline}", _ms(r.baseline_s), _ms(r.candidate_s),
              r.value_text(), "" if math.isnan(r.min_ratio) else f"{r.min_ratio:.2f}x", str(r.target or ""), r.status,
              r.skipped or "; ".join(r.failures + ([r.note] if r.note else []))) for r in rows]
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *cells)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(COLUMNS), rule] + [line(c) for c in cells])


def summary(rows: list[Row]) -> str:
    """``"12 targets: 10 PASS, 2 FAIL (case model shape, ...); 4 informational"``."""
    judged = [r for r in rows if r.status in ("PASS", "FAIL")]
    failed = [f"{r.case} {r.model} {r.shape}".strip() for r in judged if r.status == "FAIL"]
    text = f"{len(judged)} targets: {len(judged) - len(failed)} PASS, {len(failed)} FAIL"
    if failed:
        text += " (" + "; ".join(failed) + ")"
    info = sum(r.status == "info" for r in rows)
    skipped = sum(r.status == "SKIP" for r in rows)
    return text + f"; {info} informational" + (f"; {skipped} skipped" if skipped else "")
