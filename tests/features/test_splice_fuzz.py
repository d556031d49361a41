"""Differential fuzzing of spliced dictionaries: random programs that read and write the features, errors and
reconstructions of an SAE (at each layer's input) and a transcoder (at each layer's MLP), mixed with every
other kind of statement at every other site, run through every executor (traces eager and compiled, program
replay with new values, ``prog.batched``, ``mx.vmap`` over ``prog.fn``) and must give what the hand-written
forward (tests/reference.py) gives with the dictionaries applied by hand (tests/fuzz/dictionaries.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import DICT_KINDS, SITE_KINDS, FuzzDictionaries, check_program, fuzz_inputs, fuzz_model, programs

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# weighted toward the dictionaries' parts: every program has a few of them
SITES = SITE_KINDS + DICT_KINDS * 3


@pytest.fixture(scope="module")
def model():
    return fuzz_model()


@pytest.fixture(scope="module")
def dictionaries():
    return FuzzDictionaries(seed=3)


@FUZZ
@given(program=programs(site_kinds=SITES), inputs=fuzz_inputs(), seed=st.integers(0, 10_000),
       variants=st.integers(2, 3))
def test_random_programs_with_dictionaries_match_the_hand_written_forward(model, dictionaries, program, inputs, seed,
                                                                         variants):
    check_program(model, *inputs, program, seed, variants=variants, dictionaries=dictionaries)


@FUZZ
@given(program=programs(site_kinds=SITES), inputs=fuzz_inputs(padded=True), seed=st.integers(0, 10_000))
def test_random_programs_with_dictionaries_on_padded_batches(model, dictionaries, program, inputs, seed):
    check_program(model, *inputs, program, seed, variants=2, dictionaries=dictionaries)
