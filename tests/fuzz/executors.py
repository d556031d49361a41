"""Executors: each runs one program its own way and says which values the reference must be run with; the
checker compares every outcome with the reference (see :mod:`tests.fuzz`)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence

import mlx.core as mx
import numpy as np

from mlxterp import InterpretableModel

from .applier import TraceRun, param_values, run_reference, run_trace
from .programs import Seeds, Step, StepValues, values_for


@dataclasses.dataclass
class Outcome:
    """What an executor gave for one set of values (the reference runs with ``seeds``)."""

    label: str
    seeds: Seeds
    logits: Any
    saves: dict


@dataclasses.dataclass
class Case:
    """One program on one input, as an executor sees it. ``seeds(i)`` are the ``i``-th values (the same
    seed for every step; ``i`` < 4: the variants use the next ones); :meth:`recorded` is the compiled trace of
    ``seeds(1)`` and its program (whose defaults are those values), shared by the executors."""

    model: InterpretableModel
    inputs: Any  # what the library is given: an array, or a list of rows it right-pads
    tokens: mx.array  # the padded tokens the reference runs on
    program: Sequence[Step]
    seed: int
    variants: int = 3
    dictionaries: Any = None  # FuzzDictionaries spliced into every trace (and by hand into the reference)
    _program: Any = None

    def seeds(self, i: int) -> Seeds:
        return (self.seed * 16 + i,) * len(self.program)

    def values(self, seeds: Seeds) -> list[StepValues]:
        return values_for(self.program, seeds)

    def trace(self, seeds: Seeds, compile: Any) -> TraceRun:
        return run_trace(self.model, self.inputs, self.program, self.values(seeds), compile, self.dictionaries)

    def recorded(self) -> tuple[Any, TraceRun]:
        """The program of a compiled trace of ``seeds(1)`` and that trace."""
        if self._program is None:
            run = self.trace(self.seeds(1), True)
            self._program = (run.trace.program(), run)
        return self._program

    def variant_seeds(self) -> tuple[list[Seeds], set[str]]:
        """Per variant, the seeds of each step (a mapped step takes the variant's, the others the recorded
        ones), and the names of the params that differ per variant (at least one where the program has any
        param with a recipe; none where it has none)."""
        prog, run = self.recorded()
        owner = {name: run.applier.recipes[id(s.default)][1] for name, s in prog.params.items()
                 if id(s.default) in run.applier.recipes}
        steps = {k for k in owner.values() if self.program[k].mapped} or set(list(owner.values())[:1])
        base = self.seeds(1)
        seeds = [tuple(self.seed * 16 + 4 + j if k in steps else base[k] for k in range(len(self.program)))
                 for j in range(self.variants)]
        return seeds, {name for name, k in owner.items() if k in steps}

    def mapped_params(self) -> tuple[list[Seeds], dict]:
        """Per-variant seeds and the mapped params' values stacked along a leading variant axis."""
        seeds, names = self.variant_seeds()
        prog, run = self.recorded()
        per_variant = [param_values(prog, run.applier, self.values(s)) for s in seeds]
        return seeds, {n: mx.stack([mx.array(v[n]) for v in per_variant]) for n in names}


def trace_eager(case: Case) -> Iterable[Outcome]:
    run = case.trace(case.seeds(0), False)
    yield Outcome("eager trace", case.seeds(0), run.logits, run.saves)


def trace_compiled(case: Case) -> Iterable[Outcome]:
    """Compiled traces of one structure with two sets of values: the second is a cache hit, no retrace."""
    run = case.trace(case.seeds(0), True)
    yield Outcome("compiled trace", case.seeds(0), run.logits, run.saves)
    traces = case.model.compile_stats()["traces"]
    _, run = case.recorded()
    assert case.model.compile_stats()["traces"] == traces, "a new value retraced a compiled trace"
    yield Outcome("compiled trace, new values", case.seeds(1), run.logits, run.saves)


def replay(case: Case) -> Iterable[Outcome]:
    """The program called with new values for every param, then with another set: no retrace."""
    prog, run = case.recorded()
    for i in (2, 3):
        traces = case.model.compile_stats()["traces"]
        out = prog(**param_values(prog, run.applier, case.values(case.seeds(i))))
        assert i == 2 or case.model.compile_stats()["traces"] == traces, "a replay with new values retraced"
        yield Outcome(f"replay values#{i}", case.seeds(i), out["logits"], {k: v for k, v in out.items() if k != "logits"})


def _variants(case: Case, label: str, outputs: dict, seeds: list[Seeds]) -> Iterable[Outcome]:
    for j, s in enumerate(seeds):
        yield Outcome(f"{label} variant {j}/{len(seeds)}", s, outputs["logits"][j],
                      {k: v[j] for k, v in outputs.items() if k != "logits"})


def batched(case: Case) -> Iterable[Outcome]:
    """``prog.batched``: the mapped params stacked, the others constant for all variants."""
    seeds, mapped = case.mapped_params()
    if mapped:
        yield from _variants(case, "batched", case.recorded()[0].batched(**mapped), seeds)


def vmapped(case: Case) -> Iterable[Outcome]:
    """``mx.vmap`` over ``prog.fn`` along the mapped params."""
    seeds, mapped = case.mapped_params()
    if mapped:
        prog, names = case.recorded()[0], list(mapped)
        fn = mx.vmap(lambda *vs: prog.fn(params=dict(zip(names, vs))))
        yield from _variants(case, "vmap", fn(*[mapped[n] for n in names]), seeds)


EXECUTORS: dict[str, Callable[[Case], Iterable[Outcome]]] = {
    "eager": trace_eager, "compiled": trace_compiled, "replay": replay, "batched": batched, "vmap": vmapped}
COVERAGE: collections.Counter = collections.Counter()  # outcomes checked, by executor (for the long run)


def assert_close(got: Any, expected: Any, what: str) -> None:
    """Equal to float32 rounding: relative to the largest ordinary entry; entries past 1e30 (masked scores hold
    the dtype's lowest value, maybe scaled) and infinities each relative to themselves."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    huge = ~np.isfinite(expected) | (np.abs(expected) > 1e30)
    np.testing.assert_allclose(got[huge], expected[huge], rtol=1e-4, err_msg=what)
    scale = max(1.0, float(np.abs(expected[~huge]).max(initial=0.0)))
    np.testing.assert_allclose(got[~huge], expected[~huge], rtol=1e-4, atol=1e-4 * scale, err_msg=what)


def check_program(model: InterpretableModel, inputs: Any, tokens: mx.array, program: Sequence[Step], seed: int,
                  executors: Iterable[str] = tuple(EXECUTORS), extra: Optional[dict] = None,
                  variants: int = 3, dictionaries: Any = None) -> None:
    """Run ``program`` through each named executor (and ``extra``: ``{name: fn(case)}``) and check every
    outcome's logits and saves against the reference run with the outcome's values (``dictionaries``: a
    :class:`~tests.fuzz.dictionaries.FuzzDictionaries` spliced into both)."""
    model.clear_compile_cache()
    case = Case(model, inputs, tokens, program, seed, variants, dictionaries)
    references: dict[Seeds, tuple] = {}
    chosen = {**{name: EXECUTORS[name] for name in executors}, **(extra or {})}
    for name, executor in chosen.items():
        for outcome in executor(case):
            if outcome.seeds not in references:
                references[outcome.seeds] = run_reference(model.model, tokens, program, case.values(outcome.seeds),
                                                          dictionaries=dictionaries)
            ref_logits, ref_saves = references[outcome.seeds]
            where = f"{outcome.label} seed={seed} program={list(program)}"
            assert outcome.saves.keys() == ref_saves.keys(), where
            assert_close(outcome.logits, ref_logits, "logits " + where)
            for key in ref_saves:
                assert_close(outcome.saves[key], ref_saves[key], f"save {key} " + where)
            COVERAGE[name] += 1
