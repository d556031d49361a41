"""Differential fuzzing of invokes against the hand-written forward: random traces of 2-4 invokes (prompts of
random lengths, so the batch is right-padded), each with random reads, saves and writes at every kind of
site, and writes that read other invokes' values (cross-invoke references). Every invoke must give what the
hand-written forward (tests/reference.py) gives on its prompt alone, with the same program applied and the
other invokes' values taken from their own reference runs; eager and compiled (new values: no retrace),
and as a program replayed on new prompts of other lengths. A write from another invoke's value at a site
the forward reaches later must be refused (CausalityError naming both invokes).

Each trace runs on a model with a random edit (none, a dict of interventions, or a recorded edit) of the
same kinds of writes at every kind of site: each invoke must get it on its own prompt, before its own
steps, as the hand-written forward with the edit's hooks gives.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxterp import InterpretableModel, apply
from mlxterp import interventions as iv
from mlxterp.compiler import CausalityError
from tests.models import tiny_llama_module
from tests.reference import llama_forward

LAYERS, HIDDEN, VOCAB, HEADS = 2, 32, 128, 4
HIDDEN_KINDS = ["embed", "layer_in", "attn", "mlp", "layer"]  # values of shape (rows, seq, HIDDEN)
SITE_KINDS = HIDDEN_KINDS + ["pattern", "heads", "output"]
WRITES = ["scale", "add_vec", "set_pos", "set_pos_vec", "set_slice", "tanh_mix", "replace_number", "cross"]
READS = ["save", "save_pos", "dead"]
CROSS_LATE = "cross_late"  # a write from another invoke's value at a later site: refused


@dataclasses.dataclass(frozen=True)
class Step:
    site: tuple
    kind: str
    choice: int  # structural choices: positions, bounds, which earlier value to read


def site_order(site: tuple) -> tuple:
    rank = {"layer_in": 0, "pattern": 1, "heads": 2, "attn": 3, "mlp": 4, "layer": 5}
    if site[0] == "embed":
        return (-1,)
    if site[0] == "output":
        return (LAYERS,)
    return (site[1], rank[site[0]])


def all_sites() -> list[tuple]:
    sites = [("embed",)] + [(k, i) for i in range(LAYERS) for k in SITE_KINDS if k not in ("embed", "output")]
    return sorted(sites + [("output",)], key=site_order)


def hidden(site: tuple) -> bool:
    return site[0] in HIDDEN_KINDS


@st.composite
def invoke_steps(draw, late: bool) -> list[Step]:
    steps = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(SITE_KINDS))
        site = (kind,) if kind in ("embed", "output") else (kind, draw(st.integers(0, LAYERS - 1)))
        what = draw(st.sampled_from(WRITES + READS))
        if site[0] == "pattern":
            what = "save" if what in WRITES else what  # read-only here: the fuzzer of traces writes it
        elif site[0] == "heads" and what in WRITES:
            what = "set_head"
        elif what == "cross" and not hidden(site):
            what = "scale"
        steps.append(Step(site, what, draw(st.integers(0, 10_000))))
    if late:
        steps.append(Step(("layer_in", 0), CROSS_LATE, draw(st.integers(0, 10_000))))
    return sorted(steps, key=lambda s: site_order(s.site))


@st.composite
def invoke_programs(draw) -> tuple[list[list[Step]], list[int]]:
    """Steps of each invoke and each invoke's prompt length; rarely, a write the forward cannot order."""
    n = draw(st.integers(2, 4))
    late = draw(st.integers(1, n - 1)) if draw(st.integers(0, 7)) == 0 else None
    program = [draw(invoke_steps(late == k)) for k in range(n)]
    lengths = draw(st.lists(st.integers(2, 7), min_size=n, max_size=n))
    return program, lengths


EDIT_FORMS = ["none", "dict", "recorded"]
EDIT_WRITES = ["scale", "add_vec", "set_pos", "set_pos_vec", "set_slice", "tanh_mix", "replace_number"]
EDIT_NAMES = {"embed": "embed", "layer_in": "layers.{}.resid_pre", "attn": "layers.{}.attn", "mlp": "layers.{}.mlp",
              "layer": "layers.{}", "heads": "layers.{}.attn.heads", "pattern": "layers.{}.attn.pattern",
              "output": "lm_head"}


@st.composite
def edits(draw) -> tuple[str, list[Step]]:
    """A model edit: its form and its steps (writes at any kind of site, no reads across invokes)."""
    form = draw(st.sampled_from(EDIT_FORMS))
    steps = []
    for _ in range(0 if form == "none" else draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(SITE_KINDS))
        site = (kind,) if kind in ("embed", "output") else (kind, draw(st.integers(0, LAYERS - 1)))
        what = draw(st.sampled_from(EDIT_WRITES))
        if site[0] == "pattern":
            what = "scale"
        elif site[0] == "heads" and what not in ("scale", "tanh_mix"):
            what = "set_head"
        steps.append(Step(site, what, draw(st.integers(0, 10_000))))
    return form, sorted(steps, key=lambda s: site_order(s.site))


def values_for(program: list[list[Step]], seed: int) -> list[list[tuple]]:
    rng = np.random.default_rng(seed)
    return [[(float(rng.uniform(-2, 2)), rng.normal(size=HIDDEN).astype(np.float32),
              rng.normal(size=VOCAB).astype(np.float32)) for _ in steps] for steps in program]


class Applier:
    """Applies one invoke's steps; the same code serves the tracer (proxies) and the reference (arrays).
    ``exported[(invoke, site)]`` holds each hidden site's value after the invoke's steps there, for the
    cross-invoke steps of later invokes."""

    def __init__(self, k, steps, values, seq_len, save, exported, get, set_):
        self.k, self.steps, self.values, self.seq_len = k, steps, values, seq_len
        self.save, self.exported, self.get, self.set = save, exported, get, set_

    def run_site(self, site: tuple) -> None:
        for i, step in enumerate(self.steps):
            if step.site == site:
                self.step(i, step)
        if hidden(site):
            self.exported[(self.k, site)] = self.get(site)

    def pos(self, choice: int, length: int) -> int:
        return choice % length - (length if choice % 3 == 0 else 0)  # negative indices too

    def source(self, step: Step, late: bool):
        """An earlier invoke's exported value at a site before (or at) this one, or after it if ``late``."""
        mine = site_order(step.site)
        found = sorted(((j, s) for (j, s) in self.exported if j < self.k
                        and (site_order(s) > mine if late else site_order(s) <= mine)), key=str)
        return found[step.choice % len(found)] if found else None

    def step(self, i: int, step: Step) -> None:
        number, hidden_vec, vocab_vec = self.values[i]
        cur = self.get(step.site)
        vec = mx.array(vocab_vec if step.site[0] == "output" else hidden_vec)
        width = VOCAB if step.site[0] == "output" else HIDDEN
        pos = self.pos(step.choice, self.seq_len)
        kind = step.kind
        if kind == "save":
            self.save(f"i{self.k}s{i}", cur)
        elif kind == "save_pos":
            self.save(f"i{self.k}s{i}", cur[:, :, pos] if step.site[0] == "pattern" else cur[:, pos])
        elif kind == "dead":
            junk = cur * number  # noqa: F841 (never used)
        elif kind == "scale":
            self.set(step.site, cur * number)
        elif kind == "add_vec":
            self.set(step.site, cur + vec)
        elif kind == "set_pos":
            cur[:, pos] = number
            self.set(step.site, cur)
        elif kind == "set_pos_vec":
            cur[:, pos] = vec
            self.set(step.site, cur)
        elif kind == "set_slice":
            cur[:, pos:, : 1 + step.choice % width] = number
            self.set(step.site, cur)
        elif kind == "tanh_mix":
            self.set(step.site, apply(mx.tanh, cur * number) + cur)
        elif kind == "replace_number":
            self.set(step.site, number)
        elif kind == "set_head":
            cur[:, :, step.choice % HEADS] = number
            self.set(step.site, cur)
        elif kind in ("cross", CROSS_LATE):
            found = self.source(step, kind == CROSS_LATE)
            if found is None:
                self.set(step.site, cur - number)
                return
            j, site = found
            value = self.exported[found][:, step.choice % 2]
            cur[:, pos] = value * number + cur[:, pos]
            self.set(step.site, cur)
        else:
            raise AssertionError(kind)


def edit_applier(steps, values, shortest, get, set_) -> Applier:
    """The edit's steps as an Applier: positions fixed for the shortest prompt (valid in every invoke), as a
    recorded edit's integer indices are."""
    return Applier(-1, steps, values, shortest, None, {}, get, set_)


def site_function(site, steps, values, shortest):
    """The dict form of the edit's steps at ``site``: the library's position-wise interventions where they
    express them (so some edits are recorded once on the whole batch), else a function of the array."""
    if all(s.kind in ("scale", "add_vec") for s in steps):
        composed = iv.compose()
        for step, (number, hidden_vec, vocab_vec) in zip(steps, values):
            vec = mx.array(vocab_vec if site[0] == "output" else hidden_vec)
            composed.add(iv.scale(number) if step.kind == "scale" else iv.add_vector(vec))
        return composed.build()

    def fn(x):
        box = {site: x}
        edit_applier(steps, values, shortest, lambda s: mx.array(box[s]), set_in(box)).run_site(site)
        return box[site]
    return fn


def set_in(current):
    def set_(site, value):
        if isinstance(value, float):  # a whole write of a number: the activation's shape and dtype
            value = mx.full(current[site].shape, value, current[site].dtype)
        current[site] = value
    return set_


def edited_model(model, edit, values, shortest):
    """``model`` with the drawn edit (``values``: one per step)."""
    form, steps = edit
    if form == "dict":
        by_site = {}
        for step, value in zip(steps, values):
            by_site.setdefault(step.site, []).append((step, value))
        return model.edit({EDIT_NAMES[site[0]].format(*site[1:]): site_function(site, *zip(*pairs), shortest)
                           for site, pairs in by_site.items()})
    if form == "recorded":
        with model.edit() as ed:
            applier = edit_applier(steps, values, shortest, lambda s: library_value(model, s),
                                   lambda s, v: library_value(model, s, v, write=True))
            for site in all_sites():
                applier.run_site(site)
        return ed.model
    return model


def expects_refusal(program) -> bool:
    """Whether a step writes from an earlier invoke's later value (every invoke exports every hidden site, so
    an invoke after the first always finds one)."""
    return any(step.kind == CROSS_LATE for steps in program for step in steps)


def library_value(model: InterpretableModel, site: tuple, value=None, write=False):
    kind = site[0]
    if kind == "embed":
        target, attr = model.module("model.embed_tokens"), "output"
    elif kind == "output":
        target, attr = model.module(""), "output"
    elif kind in ("pattern", "heads"):
        target, attr = model.layers[site[1]].attn, kind
    else:
        target = model.layers[site[1]] if kind in ("layer_in", "layer") else getattr(model.layers[site[1]], kind)
        attr = "input" if kind == "layer_in" else "output"
    if write:
        setattr(target, attr, value)
        return None
    return getattr(target, attr)


def run_library(model, prompts, program, values, compile):
    exported, keys = {}, []
    with model.trace(compile=compile, capture="saved") as tr:
        for k, (prompt, steps) in enumerate(zip(prompts, program)):
            with tr.invoke(prompt, name=f"p{k}"):
                applier = Applier(k, steps, values[k], len(prompt), lambda key, v: keys.append(v.save(key)._save_key),
                                  exported, lambda s: library_value(model, s),
                                  lambda s, v: library_value(model, s, v, write=True))
                for site in all_sites():
                    applier.run_site(site)
                model.output.save(f"logits{k}")
    return tr, {key: tr.saved_values[key] for key in keys + [f"logits{k}" for k in range(len(prompts))]}


def run_reference(module, prompts, program, values, lengths, edit=((), (), 1)):
    """Each invoke's prompt alone through the hand-written forward, in order; ``lengths``: the lengths the
    programs' positions were recorded with; ``edit``: the model's edit (its steps, values and the shortest
    length its positions were drawn for), applied first at each site."""
    saves, exported = {}, {}
    for k, (prompt, steps) in enumerate(zip(prompts, program)):
        current = {}
        applier = Applier(k, steps, values[k], lengths[k], saves.__setitem__, exported,
                          lambda site, current=current: mx.array(current[site]), set_in(current))
        edited = edit_applier(*edit, lambda site, current=current: mx.array(current[site]), set_in(current))

        def hook(site, value, current=current, applier=applier, edited=edited):
            if site[0] not in SITE_KINDS:
                return value
            current[site] = value
            edited.run_site(site)
            applier.run_site(site)
            return current[site]

        saves[f"logits{k}"] = llama_forward(module, mx.array([prompt]), hook)
    return saves


def assert_close(got, expected, what):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def assert_same(got: dict, expected: dict, where: str) -> None:
    assert got.keys() == expected.keys(), where
    for key in got:
        assert_close(got[key], expected[key], f"{key} {where}")


@pytest.fixture(scope="module")
def fuzz_model():
    return InterpretableModel(tiny_llama_module(seed=13, layers=LAYERS, hidden=HIDDEN, vocab=VOCAB))


def prompts_of(lengths, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=n).tolist() for n in lengths]


FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(drawn=invoke_programs(), seeds=st.tuples(st.integers(0, 99), st.integers(100, 199)),
       grow=st.lists(st.integers(0, 3), min_size=4, max_size=4), edit=edits())
def test_random_invoke_programs_match_the_hand_written_forward(fuzz_model, drawn, seeds, grow, edit):
    program, lengths = drawn
    prompts = prompts_of(lengths, sum(lengths))
    fuzz_model.clear_compile_cache()
    form, edit_steps = edit
    edit_values = values_for([edit_steps], seeds[0] + 7)[0]
    model = edited_model(fuzz_model, edit, edit_values, min(lengths))
    edit = (edit_steps, edit_values, min(lengths))
    if expects_refusal(program):
        with pytest.raises(CausalityError, match=r"invoke 'p\d' writes .* in invoke 'p\d'"):
            run_library(model, prompts, program, values_for(program, seeds[0]), False)
        return
    for compile in (False, True):
        for n, seed in enumerate(seeds):
            values = values_for(program, seed)
            traces = model.compile_stats()["traces"]
            tr, got = run_library(model, prompts, program, values, compile)
            if compile and n > 0:  # same structure, new values: the compiled cache serves it, no retrace
                assert model.compile_stats()["traces"] == traces
            where = f"compile={compile} values#{n} lengths={lengths} program={program} edit={form} {edit_steps}"
            assert_same(got, run_reference(model.model, prompts, program, values, lengths, edit), where)
    # the last trace as a program: replayed as recorded, then on new prompts at least as long
    prog = tr.program()
    assert_same({k: prog()[k] for k in got}, got, "replay")
    longer = prompts_of([n + g for n, g in zip(lengths, grow)], seeds[1])
    out = prog(**{f"p{k}": p for k, p in enumerate(longer)})
    expected = run_reference(model.model, longer, program, values, lengths, edit)
    assert_same({k: out[k] for k in got}, expected, f"replay on new prompts {[len(p) for p in longer]}")
