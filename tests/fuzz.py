"""The differential fuzzer's parts: random intervention programs, their values, one applier that runs a program
on the library's traced values or on the hand-written reference's arrays (tests/reference.py), and a checker
that runs every executor on one program and compares each with the reference.

Importable by any test module (``from tests.fuzz import ...``):

- :func:`programs` (a Hypothesis strategy of programs: lists of :class:`Step`), :func:`fuzz_inputs` (a strategy
  of inputs: token arrays or right-padded rows), :func:`values_for` (the values of one program for given
  seeds: new values, same structure), :func:`fuzz_module`/:func:`fuzz_model` (the tiny llama the fuzzer
  runs), :func:`random_tokens`, :func:`padded_rows`;
- :class:`Applier` (applies a program through ``get``/``set``/``save`` callables), :func:`run_reference`
  (the reference forward with a program applied), :func:`run_trace` (the same program in ``model.trace``);
- :func:`check_program` (every executor of :data:`EXECUTORS`, plus any ``extra`` ones, against the
  reference), :class:`Case` (what an executor receives), :class:`Outcome` (what it returns),
  :func:`assert_close`.

An executor is ``fn(case) -> iterable of Outcome``: each outcome names the values (a :data:`Seeds` tuple, one
seed per step) the reference must be run with, and the logits and saves the executor gave. A program's values
come from recipes (:class:`Applier` records which step and slot every number, vector and index array it hands
out came from), so a program's params can be given new values by name (:func:`param_values`), and a folded or
vmapped run knows which params differ per variant: a step marked ``mapped`` takes each variant's values, every
other step keeps the recorded ones (constant writes, the same for all variants).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

import mlxterp as mt
from mlxterp import InterpretableModel, apply
from mlxterp import interventions as iv
from tests.models import tiny_llama_module
from tests.reference import llama_forward

LAYERS, HIDDEN, VOCAB, HEADS, KV_HEADS = 2, 32, 128, 4, 2
HEAD_DIM = HIDDEN // HEADS

RESIDUAL = ("embed", "layer_in", "attn", "mlp", "layer")
ATTENTION = ("q", "k", "v", "scores", "pattern", "heads")
SITE_KINDS = RESIDUAL + ATTENTION + ("output",)
WRITES = ("scale", "add_vec", "set_pos", "set_pos_vec", "set_slice", "set_index", "tanh_mix", "cross",
          "replace_number", "intervention")
READS = ("save", "save_pos", "save_reduce", "dead_number", "dead_array", "dead_function")
KINDS = WRITES + READS
INTERVENTION_SITES = ("attn", "mlp", "layer") + ATTENTION  # interventions= names a module or an attention point


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a site's axes are: token positions (query or key), heads; sites of one group share a shape."""

    positions: tuple[int, ...]
    head: Optional[int]
    group: str


LAYOUTS = {**{kind: Layout((1,), None, "residual") for kind in RESIDUAL}, "output": Layout((1,), None, "output"),
           "q": Layout((1,), 2, "query"), "heads": Layout((1,), 2, "query"),  # (batch, query, heads, head_dim)
           "k": Layout((1,), 2, "kv"), "v": Layout((1,), 2, "kv"),  # (batch, key, kv_heads, head_dim)
           "scores": Layout((2, 3), 1, "scores"), "pattern": Layout((2, 3), 1, "scores")}  # (batch, heads, q, k)
ORDER = ("layer_in",) + ATTENTION + ("attn", "mlp", "layer")  # a layer's sites in execution order


@dataclasses.dataclass(frozen=True)
class Step:
    """One statement of a program: ``kind`` at ``site``; ``choice`` picks positions, axes, slice bounds and
    earlier values; ``mapped``: in folded and vmapped runs its values differ per variant (else constant)."""

    site: tuple
    kind: str
    choice: int
    mapped: bool = False


def site_order(site: tuple) -> tuple:
    if site[0] == "embed":
        return (-1, 0)
    if site[0] == "output":
        return (LAYERS, 0)
    return (site[1], ORDER.index(site[0]))


def sites_in_order() -> list[tuple]:
    return [("embed",)] + [(kind, i) for i in range(LAYERS) for kind in ORDER] + [("output",)]


@st.composite
def programs(draw, max_steps: int = 9, site_kinds: Sequence[str] = SITE_KINDS, kinds: Sequence[str] = KINDS):
    """Random programs: 1..``max_steps`` steps at ``site_kinds`` sites, sorted in execution order (as user
    code usually is; several steps may share a site)."""
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(site_kinds))
        site = (kind,) if kind in ("embed", "output") else (kind, draw(st.integers(0, LAYERS - 1)))
        what = draw(st.sampled_from(kinds))
        if what == "intervention" and site[0] not in INTERVENTION_SITES:
            what = "scale"
        if what == "intervention" and any(s.site == site and s.kind == "intervention" for s in steps):
            what = "add_vec"  # interventions= holds one function per module
        steps.append(Step(site, what, draw(st.integers(0, 10_000)), draw(st.booleans())))
    return sorted(steps, key=lambda s: site_order(s.site))


# -- values -----------------------------------------------------------------------------------------------

Seeds = tuple  # one seed per step: which values each step takes


@dataclasses.dataclass(frozen=True)
class StepValues:
    number: float
    hidden: np.ndarray  # (HIDDEN,): vectors of any narrower width are its first entries
    vocab: np.ndarray  # (VOCAB,)
    ints: np.ndarray  # (2,): the entries of an index array


def values_for(program: Sequence[Step], seed: Union[int, Seeds]) -> list[StepValues]:
    """The values of each step: one seed for all, or one per step (step ``k``'s values depend only on its
    own seed and ``k``, so values mix across seeds step by step)."""
    seeds = seed if isinstance(seed, tuple) else (seed,) * len(program)
    out = []
    for k, s in enumerate(seeds):
        rng = np.random.default_rng((s, k))
        out.append(StepValues(float(rng.uniform(-2, 2)), rng.normal(size=HIDDEN).astype(np.float32),
                              rng.normal(size=VOCAB).astype(np.float32), rng.integers(-64, 64, size=2)))
    return out


def recipe_value(recipe: tuple, values: Sequence[StepValues]) -> Any:
    """The value a recipe (see :meth:`Applier.number`, ``vector``, ``index``) gives for ``values``."""
    kind, k, size = recipe
    if kind in ("number", "positive"):
        return values[k].number if kind == "number" else abs(values[k].number)
    if kind == "vector":
        return mx.array(values[k].vocab if size == VOCAB else values[k].hidden[:size])
    return mx.array(values[k].ints % size - size * (values[k].ints < 0))  # in [-size, size): negative ones too


# -- applying a program -----------------------------------------------------------------------------------


class Applier:
    """Applies one program: the same code serves the tracer (proxies) and the reference (arrays).

    ``get(site)``/``set(site, value)`` read and write a site's current value, ``save(key, value)`` keeps one.
    ``recipes`` maps ``id`` of every value handed out to the recipe it came from (see :func:`recipe_value`).
    """

    def __init__(self, program: Sequence[Step], values: Sequence[StepValues], seq_len: int,
                 get: Callable, set: Callable, save: Callable, interventions_done: bool = False,
                 name: Optional[Callable[[str, Any], Any]] = None):
        self.program, self.values, self.seq_len = program, values, seq_len
        self.get, self.set, self.save = get, set, save
        self.interventions_done = interventions_done  # the tracer applies them through interventions=
        self.name = name  # the tracer's mlxterp.param: some values become named params
        self.earlier: list[tuple[tuple, Any]] = []  # (site, value) of sites already passed
        self.recipes: dict[int, tuple] = {}
        self._handed: dict[tuple, Any] = {}  # keeps the values alive, so their ids stay theirs
        self._named: dict[tuple, Any] = {}

    def _hand(self, recipe: tuple, named: bool = True) -> Any:
        if recipe not in self._handed:
            value = self._handed[recipe] = recipe_value(recipe, self.values)
            self.recipes[id(value)] = recipe
        if not (named and self.name is not None and self.program[recipe[1]].choice % 4 == 1):
            return self._handed[recipe]
        if recipe not in self._named:  # a named param (mlxterp.param) instead of a constant, for a quarter
            self._named[recipe] = self.name(f"p{recipe[1]}_{recipe[0]}_{recipe[2]}", self._handed[recipe])
        return self._named[recipe]

    def number(self, k: int, named: bool = True) -> float:
        return self._hand(("number", k, 0), named)

    def vector(self, k: int, width: int, named: bool = True) -> mx.array:
        return self._hand(("vector", k, width), named)

    def index(self, k: int, size: int) -> mx.array:
        return self._hand(("index", k, size), False)  # an index is structure: a param only as an array

    def factor(self, k: int, site: tuple) -> Any:
        """Step ``k``'s number as a factor: positive at the scores, whose masked entries hold the dtype's lowest
        value (a negative factor would make them the highest: infinities, then NaN everywhere after)."""
        return self._hand(("positive", k, 0)) if site[0] == "scores" else self.number(k)

    def intervention(self, k: int, site: tuple) -> Callable:
        """The ``interventions=`` entry of step ``k`` (made before the trace opens: its values are constants)."""
        step = self.program[k]
        return (iv.scale(self.number(k, False)) if step.choice % 2 == 0
                else iv.add_vector(self.vector(k, self.width(site), False)))

    def shape(self, site: tuple) -> tuple:
        """The site's shape after its batch axis."""
        group, seq = LAYOUTS[site[0]].group, self.seq_len
        return {"residual": (seq, HIDDEN), "output": (seq, VOCAB), "query": (seq, HEADS, HEAD_DIM),
                "kv": (seq, KV_HEADS, HEAD_DIM), "scores": (HEADS, seq, seq)}[group]

    def width(self, site: tuple) -> int:
        """The length of the site's last axis."""
        return self.shape(site)[-1]

    def size(self, site: tuple, axis: int) -> int:
        return self.shape(site)[axis - 1]

    def run_site(self, site: tuple) -> None:
        steps = [(k, s) for k, s in enumerate(self.program) if s.site == site]
        for k, step in sorted(steps, key=lambda ks: ks[1].kind != "intervention"):  # interventions= first
            if not (step.kind == "intervention" and self.interventions_done):
                self.step(k, step)
        self.earlier.append((site, self.get(site)))

    def axis(self, step: Step, with_head: bool) -> int:
        layout = LAYOUTS[step.site[0]]
        axes = layout.positions + ((layout.head,) if with_head and layout.head is not None else ())
        return axes[(step.choice // 5) % len(axes)]

    def at(self, step: Step, axis: int) -> int:
        """An index along ``axis`` (negative ones too)."""
        n = self.size(step.site, axis)
        return step.choice % n - (n if step.choice % 3 == 0 else 0)

    def step(self, k: int, step: Step) -> None:
        cur, site, kind = self.get(step.site), step.site, step.kind
        width, ndim = self.width(site), 3 if LAYOUTS[site[0]].head is None else 4
        if kind in ("save", "save_pos", "save_reduce"):
            axis = self.axis(step, True)
            self.save(f"s{k}", {"save": lambda: cur, "save_reduce": lambda: cur[..., : 1 + step.choice % width].sum(-1),
                                "save_pos": lambda: cur[(slice(None),) * axis + (self.at(step, axis),)]}[kind]())
        elif kind == "scale":
            self.set(site, cur * self.factor(k, site))
        elif kind == "add_vec":
            self.set(site, cur + self.vector(k, width))
        elif kind in ("set_pos", "set_pos_vec", "set_index"):
            axis = self.axis(step, True)
            where = self.index(k, self.size(site, axis)) if kind == "set_index" else self.at(step, axis)
            cur[(slice(None),) * axis + (where,)] = self.vector(k, width) if kind == "set_pos_vec" else self.number(k)
            self.set(site, cur)
        elif kind == "set_slice":
            axis = self.axis(step, False)
            other = ndim - 1 if axis != ndim - 1 else LAYOUTS[site[0]].head
            index = [slice(None)] * ndim
            index[axis] = slice(self.at(step, axis), None)
            index[other] = slice(None, 1 + step.choice % self.size(site, other))
            cur[tuple(index)] = self.number(k)
            self.set(site, cur)
        elif kind == "tanh_mix":
            self.set(site, apply(mx.tanh, cur * self.number(k)) + cur)
        elif kind == "cross":
            same = [v for s, v in self.earlier if s != site and LAYOUTS[s[0]].group == LAYOUTS[site[0]].group]
            self.set(site, cur + same[step.choice % len(same)] * self.factor(k, site) if same else cur - self.number(k))
        elif kind == "replace_number":  # a named param is an array: written to an input, it would not broadcast
            self.set(site, self.number(k, named=site[0] != "layer_in"))
        elif kind == "intervention":
            self.set(site, self.intervention(k, site)(cur))
        elif kind == "dead_number":
            junk = cur * self.number(k)  # noqa: F841 (never used)
        elif kind == "dead_array":
            junk = cur + mx.ones(width) * self.number(k, False)  # noqa: F841 (an array op: no traced value)
        elif kind == "dead_function":
            junk = apply(mx.exp, cur * self.number(k))  # noqa: F841
        else:
            raise AssertionError(kind)


def run_reference(module, tokens: mx.array, program: Sequence[Step], values: Sequence[StepValues]) -> tuple:
    """The hand-written forward's logits and saves with ``program`` applied to its arrays."""
    saves: dict = {}
    current: dict = {}

    def set_(site, value):
        if isinstance(value, float):  # a whole write of a number: the activation's shape and dtype
            value = mx.broadcast_to(mx.array(value, dtype=current[site].dtype), current[site].shape)
        current[site] = value

    applier = Applier(program, values, tokens.shape[1], lambda site: mx.array(current[site]), set_, saves.__setitem__)

    def hook(site, value):
        if site[0] not in SITE_KINDS:  # a site the programs never touch (the reference's resid_mid)
            return value
        current[site] = value
        applier.run_site(site)
        return current[site]

    return llama_forward(module, tokens, hook), saves


@dataclasses.dataclass
class TraceRun:
    logits: mx.array
    saves: dict
    trace: Any
    applier: Applier


def library_site(model: InterpretableModel, site: tuple) -> tuple[Any, str]:
    """The module proxy holding ``site`` and the attribute that reads or writes it."""
    kind = site[0]
    if kind == "embed":
        return model.module("model.embed_tokens"), "output"
    if kind == "output":
        return model.module(""), "output"
    if kind in ATTENTION:
        return model.module(f"layers.{site[1]}.self_attn"), kind
    path = {"layer_in": "", "layer": "", "attn": ".self_attn", "mlp": ".mlp"}[kind]
    return model.module(f"layers.{site[1]}{path}"), "input" if kind == "layer_in" else "output"


def library_name(model: InterpretableModel, site: tuple) -> str:
    proxy, attr = library_site(model, site)
    return proxy.name if site[0] not in ATTENTION else f"{proxy.name}.{attr}"


def run_trace(model: InterpretableModel, inputs: Any, program: Sequence[Step], values: Sequence[StepValues],
              compile: Any) -> TraceRun:
    """``program`` in ``model.trace(inputs, compile=compile)``: its logits, saves, trace and applier."""
    seq_len = max(len(r) for r in inputs) if isinstance(inputs, list) else inputs.shape[1]
    saves: dict = {}
    applier = Applier(program, values, seq_len, lambda site: getattr(*library_site(model, site)),
                      lambda site, value: setattr(*library_site(model, site), value),
                      lambda key, v: saves.__setitem__(key, v.save(key)), interventions_done=True, name=mt.param)
    interventions = {library_name(model, s.site): applier.intervention(k, s.site)
                     for k, s in enumerate(program) if s.kind == "intervention"}
    with model.trace(inputs, interventions=interventions or None, compile=compile, capture="saved") as tr:
        for site in sites_in_order():
            applier.run_site(site)
        model.output.save("logits")
    return TraceRun(tr.saved_values["logits"], {k: tr.saved_values[k] for k in saves}, tr, applier)


def param_values(prog: Any, applier: Applier, values: Sequence[StepValues]) -> dict:
    """Values of ``prog``'s params for ``values``, by name: each param's recipe (from the applier whose values
    built the program) applied to ``values``. Params of no recipe keep their defaults."""
    out = {}
    for name, spec in prog.params.items():
        recipe = applier.recipes.get(id(spec.default))
        if recipe is not None:
            out[name] = recipe_value(recipe, values)
    return out


# -- executors ------------------------------------------------------------------------------------------


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
    seed for every step); the compiled trace executor records values ``seeds(0)`` then ``seeds(1)``, and
    :meth:`program` is built from the second (its defaults are ``seeds(1)``)."""

    model: InterpretableModel
    inputs: Any  # what the library is given: an array, or a list of rows it right-pads
    tokens: mx.array  # the padded tokens the reference runs on
    program: Sequence[Step]
    seed: int
    variants: int = 3
    _program: Any = None

    def seeds(self, i: int) -> Seeds:
        return (self.seed * 16 + i,) * len(self.program)

    def values(self, seeds: Seeds) -> list[StepValues]:
        return values_for(self.program, seeds)

    def trace(self, seeds: Seeds, compile: Any) -> TraceRun:
        return run_trace(self.model, self.inputs, self.program, self.values(seeds), compile)

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
                  variants: int = 3) -> None:
    """Run ``program`` through each named executor (and ``extra``: ``{name: fn(case)}``) and check every
    outcome's logits and saves against the reference run with the outcome's values."""
    model.clear_compile_cache()
    case = Case(model, inputs, tokens, program, seed, variants)
    references: dict[Seeds, tuple] = {}
    chosen = {**{name: EXECUTORS[name] for name in executors}, **(extra or {})}
    for name, executor in chosen.items():
        for outcome in executor(case):
            if outcome.seeds not in references:
                references[outcome.seeds] = run_reference(model.model, tokens, program, case.values(outcome.seeds))
            ref_logits, ref_saves = references[outcome.seeds]
            where = f"{outcome.label} seed={seed} program={list(program)}"
            assert outcome.saves.keys() == ref_saves.keys(), where
            assert_close(outcome.logits, ref_logits, "logits " + where)
            for key in ref_saves:
                assert_close(outcome.saves[key], ref_saves[key], f"save {key} " + where)
            COVERAGE[name] += 1


# -- inputs ---------------------------------------------------------------------------------------------


def fuzz_module(seed: int = 11):
    """The tiny mlx-lm llama the fuzzer runs (:data:`LAYERS` layers, :data:`HIDDEN` wide, 4 heads, 2 KV)."""
    return tiny_llama_module(seed=seed, layers=LAYERS, hidden=HIDDEN, vocab=VOCAB)


def fuzz_model(seed: int = 11) -> InterpretableModel:
    return InterpretableModel(fuzz_module(seed))


def random_tokens(batch: int, seq: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(1, VOCAB, size=(batch, seq)), dtype=mx.int32)


@st.composite
def fuzz_inputs(draw, padded: bool = False, max_seq: int = 7) -> tuple[Any, mx.array]:
    """``(what the library is given, the tokens the reference runs on)``: a ``(batch, seq)`` array for both,
    or (``padded``) 2-3 rows of different lengths and their right padding."""
    if padded:
        lengths = draw(st.lists(st.integers(2, max_seq), min_size=2, max_size=3).filter(lambda ls: len(set(ls)) > 1))
        return padded_rows(lengths, sum(lengths))
    seq, batch = draw(st.integers(2, max_seq)), draw(st.integers(1, 2))
    tokens = random_tokens(batch, seq, seq * 7 + batch)
    return tokens, tokens


def padded_rows(lengths: Sequence[int], seed: int = 0) -> tuple[list[list[int]], mx.array]:
    """Rows of the given lengths and their right padding with id 0, written by hand."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, VOCAB, size=n).tolist() for n in lengths]
    padded = np.zeros((len(rows), max(lengths)), dtype=np.int32)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    return rows, mx.array(padded)
