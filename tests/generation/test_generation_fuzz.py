"""Differential fuzzing of generation: random intervention programs over every site (embeddings, layer
inputs, q, k, v, scores, pattern, heads, attention and MLP outputs, the residual between them, layer
outputs, logits), on the token (query) axis and the key axis, some restricted with ``gen.steps[...]``, run
by ``model.generate`` eagerly and compiled, on single prompts and left-padded batches. Each must equal the
teacher-forced reference (tests/generation/teacher.py: the hand-written forward of the whole generated
sequence, each statement applied to every step's block): the logits of every step, the tokens chosen, and
every per-step save. A compiled program runs twice with new values (the second a cache hit, no retrace);
a program with a key axis (scores, pattern) is refused by ``compile=True`` and decodes eagerly.

``MLXTERP_FUZZ_EXAMPLES`` sets the number of programs per test (default 50; more for a longer run).
"""

from __future__ import annotations

import contextlib
import os

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxterp import InterpretableModel
from tests.generation.teacher import (ATTENTION, HIDDEN_SITES, KEYED, LAYERS, MODULE_SITES, VOCAB, Applier, Stmt,
                                      make_intervention, sites_in_order, teacher_forced, token_axis, values_for)
from tests.fuzz.dictionaries import DICT_KINDS, FuzzDictionaries, library_part
from tests.models import CharTokenizer, tiny_llama_module

EVERYWHERE = ["save", "save_last", "save_reduce", "scale", "add", "set_last", "tanh_mix"]
ABSOLUTE = ["save_pos", "set_pos", "scale_pos"]  # absolute token positions: refused in padded batches
KEY_AXIS = ["save_key", "set_key", "scale_keys"]
KEY_ABSOLUTE = ["save_key_pos", "set_key_pos"]
SCOPES = [None, None, None, 0, slice(1, None), 1, slice(0, None, 2)]


@st.composite
def programs(draw, padded: bool, dictionaries: bool = False) -> list[Stmt]:
    statements = []
    sites = sites_in_order(dictionaries)
    if dictionaries:  # weighted toward the dictionaries' parts
        sites = sites + [s for s in sites if s[0] in DICT_KINDS] * 3
    for _ in range(draw(st.integers(1, 6))):
        site = draw(st.sampled_from(sites))
        kinds = EVERYWHERE + ([] if padded else ABSOLUTE)
        if site[0] in KEYED:  # weighted: the key axis is what these sites add
            kinds += KEY_AXIS * 3 + ([] if padded else KEY_ABSOLUTE * 3)
        if site[0] in HIDDEN_SITES and site[0] != "embed":
            kinds.append("cross")
        if site[0] in MODULE_SITES and not any(s.site == site and s.kind == "intervention" for s in statements):
            kinds.append("intervention")
        kind = draw(st.sampled_from(kinds + ["set_prev"]))
        scope = draw(st.sampled_from(SCOPES))
        if kind == "intervention":
            scope = None  # interventions= apply at every step
        if kind == "set_prev":
            scope = 0  # -2 on the token axis means something in the prompt pass only
        statements.append(Stmt(site, kind, draw(st.integers(0, 10_000)), scope))
    order = sites_in_order(dictionaries)
    return sorted(statements, key=lambda s: order.index(s.site))  # written in execution order, as users do


def site_value(model: InterpretableModel, site: tuple):
    name = site[0]
    if name in DICT_KINDS:
        return getattr(*library_part(model, site))
    if name == "embed":
        return model.module("model.embed_tokens").output
    if name == "output":
        return model.output
    layer = model.layers[site[1]]
    if name in ATTENTION:
        return getattr(layer.attn, name)
    return {"layer_in": lambda: layer.input, "attn": lambda: layer.attn.output, "resid_mid": lambda: layer.resid_mid,
            "mlp": lambda: layer.mlp.output, "layer": lambda: layer.output}[name]()


def set_site(model: InterpretableModel, site: tuple, value) -> None:
    name = site[0]
    if name in DICT_KINDS:
        setattr(*library_part(model, site), value)
    elif name == "embed":
        model.module("model.embed_tokens").output = value
    elif name == "output":
        model.output = value
    else:
        layer = model.layers[site[1]]
        target = {"layer_in": (layer, "input"), "attn": (layer.attn, "output"), "mlp": (layer.mlp, "output"),
                  "layer": (layer, "output"), "resid_mid": (layer, "resid_mid")}.get(name, (layer.attn, name))
        setattr(*target, value)


def module_name(site: tuple) -> str:
    return {"attn": f"layers.{site[1]}.self_attn", "mlp": f"layers.{site[1]}.mlp", "layer": f"layers.{site[1]}"}[
        site[0]]


def run_library(model, prompts, program, values, steps, compile, positions, keys_kept, dictionaries=None):
    interventions = {module_name(s.site): make_intervention(s, values[k][0], mx.array(values[k][1]))
                     for k, s in enumerate(program) if s.kind == "intervention"}
    with model.generate(prompts, steps, ignore_eos=True, interventions=interventions or None, compile=compile,
                        dictionaries=None if dictionaries is None else dictionaries.all()) as gen:
        applier = Applier(program, values, positions, keys_kept, lambda key, v: v.save(key))
        applier.get, applier.set = (lambda site: site_value(model, site)), (lambda s, v: set_site(model, s, v))
        applier.scope = lambda stmt: contextlib.nullcontext() if stmt.scope is None else gen.steps[stmt.scope]
        applier.interventions_done = True
        for site in sites_in_order(dictionaries is not None):
            applier.run_site(site)
        model.output[:, -1].save("logits")
    return gen


def pinned(stmt: Stmt) -> bool:
    """Saves whose value is one step's, without a steps axis."""
    return isinstance(stmt.scope, int) or stmt.kind == "save_pos"


def padded_axes(stmt: Stmt) -> tuple:
    """Axes of a save's value (with the batch axis) on the token and on the key axis (``None``: none)."""
    keyed, tok = stmt.site[0] in KEYED, token_axis(stmt.site)
    return {"save": (tok, 3 if keyed else None), "save_last": (None, 2 if keyed else None),
            "save_pos": (None, 2 if keyed else None), "save_reduce": (tok, None),
            "save_key": (tok, None), "save_key_pos": (tok, None)}[stmt.kind]


def library_steps(gen, stmt: Stmt, key: str, row: int) -> dict[int, mx.array]:
    steps, value = gen.saved_steps[key], gen.saved_values[key]
    if pinned(stmt):
        assert len(steps) <= 1, (key, steps)
        values = [value] if steps else []
    else:
        values = list(value) if steps else []
    return {s: v[row] for s, v in zip(steps, values)}


def strip_padding(value: mx.array, axes: tuple, pad: int, step: int) -> mx.array:
    """A row's value without its left padding: token columns at the prompt pass, key columns always."""
    tok, key = (None if a is None else a - 1 for a in axes)  # the row has no batch axis
    index = [slice(None)] * value.ndim
    if tok is not None and step == 0:
        index[tok] = slice(pad, None)
    if key is not None:
        index[key] = slice(pad, None)
    return value[tuple(index)]


def assert_close(got, expected, what):
    got, expected = (np.clip(np.asarray(a, dtype=np.float64), -1e30, 1e30) for a in (got, expected))  # masked scores
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


def check_against_reference(model, gen, rows, program, values, steps, positions, keys_kept, where, dictionaries=None):
    pads = [max(map(len, rows)) - len(r) for r in rows]
    tokens = gen.tokens if len(rows) > 1 else [gen.tokens]
    for b, (prompt, pad) in enumerate(zip(rows, pads)):
        logits, saves = teacher_forced(model.model, list(prompt), tokens[b], steps, program, values, positions,
                                       keys_kept, dictionaries)
        got = gen.saved_values["logits"][:, b]
        assert_close(got, logits, f"logits row {b} {where}")
        for s, token in enumerate(tokens[b]):  # the token chosen is the reference's best (to rounding)
            slack = 1e-4 * max(1.0, float(mx.abs(logits[s]).max()))
            assert float(logits[s, token]) >= float(logits[s].max()) - slack, f"token {s} row {b} {where}"
        for k, stmt in enumerate(program):
            key = f"s{k}"
            if not stmt.kind.startswith("save"):
                continue
            mine = library_steps(gen, stmt, key, b)
            theirs = {s: v[0] for s, v in saves.get(key, {}).items()}
            assert sorted(mine) == sorted(theirs), (key, stmt, sorted(mine), sorted(theirs), where)
            for s in theirs:
                assert_close(strip_padding(mine[s], padded_axes(stmt), pad, s), theirs[s],
                             f"save {key} {stmt} step {s} row {b} {where}")


def check_program(model, rows, program, steps, seeds, dictionaries=None):
    keyed = any(s.site[0] in KEYED for s in program)
    positions, keys_kept = min(map(len, rows)) + steps - 1, min(map(len, rows))
    prompts = [list(r) for r in rows] if len(rows) > 1 else list(rows[0])
    model.clear_compile_cache()
    for compile in (False, True):
        if compile and keyed:
            with pytest.raises(ValueError, match="key axis"):
                run_library(model, prompts, program, values_for(program, seeds[0]), steps, True, positions, keys_kept,
                            dictionaries)
            continue
        for n, seed in enumerate(seeds):
            values = values_for(program, seed)
            traces = model.compile_stats()["traces"]
            gen = run_library(model, prompts, program, values, steps, compile, positions, keys_kept, dictionaries)
            if compile and n > 0:  # same structure, new values: served by the compiled cache, no retrace
                assert model.compile_stats()["traces"] == traces
            assert gen.mode == ("compiled" if compile else "eager")
            where = f"compile={compile} values#{n} program={program}"
            check_against_reference(model, gen, rows, program, values, steps, positions, keys_kept, where, dictionaries)


@pytest.fixture(scope="module")
def fuzz_model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=5, layers=LAYERS, hidden=32, vocab=VOCAB),
                              tokenizer=CharTokenizer())


EXAMPLES = int(os.environ.get("MLXTERP_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def prompt_rows(lengths: list[int]) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(sum(lengths) * 31 + len(lengths))
    return [tuple(int(t) for t in rng.integers(1, VOCAB, size=n)) for n in lengths]


@FUZZ
@given(program=programs(padded=False), length=st.integers(2, 6), steps=st.integers(2, 4),
       seeds=st.tuples(st.integers(0, 99), st.integers(100, 199)))
def test_generation_programs_match_the_teacher_forced_reference(fuzz_model, program, length, steps, seeds):
    check_program(fuzz_model, prompt_rows([length]), program, steps, seeds)


@FUZZ
@given(program=programs(padded=True), lengths=st.lists(st.integers(2, 6), min_size=2, max_size=3).filter(
    lambda ls: len(set(ls)) > 1), steps=st.integers(2, 4), seeds=st.tuples(st.integers(0, 99), st.integers(100, 199)))
def test_generation_programs_on_padded_batches_match_the_teacher_forced_reference(fuzz_model, program, lengths, steps,
                                                                                   seeds):
    check_program(fuzz_model, prompt_rows(lengths), program, steps, seeds)


@pytest.fixture(scope="module")
def fuzz_dictionaries() -> FuzzDictionaries:
    return FuzzDictionaries(seed=7)


@FUZZ
@given(program=programs(padded=False, dictionaries=True), length=st.integers(2, 6), steps=st.integers(2, 4),
       seeds=st.tuples(st.integers(0, 99), st.integers(100, 199)))
def test_generation_with_spliced_dictionaries_matches_the_teacher_forced_reference(fuzz_model, fuzz_dictionaries,
                                                                                  program, length, steps, seeds):
    """Reads and writes of an SAE's and a transcoder's features, errors and reconstructions at every step (some
    in ``gen.steps[...]``), mixed with every other statement: each step equals the hand-written forward with the
    dictionaries spliced by hand (tests/fuzz/dictionaries.py)."""
    check_program(fuzz_model, prompt_rows([length]), program, steps, seeds, fuzz_dictionaries)


@FUZZ
@given(program=programs(padded=True, dictionaries=True), lengths=st.lists(st.integers(2, 6), min_size=2,
       max_size=3).filter(lambda ls: len(set(ls)) > 1), steps=st.integers(2, 4),
       seeds=st.tuples(st.integers(0, 99), st.integers(100, 199)))
def test_generation_with_spliced_dictionaries_on_padded_batches(fuzz_model, fuzz_dictionaries, program, lengths, steps,
                                                                seeds):
    check_program(fuzz_model, prompt_rows(lengths), program, steps, seeds, fuzz_dictionaries)
