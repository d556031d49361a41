"""Differential fuzzing against an independent forward: random intervention programs run through every
executor (traces eager and compiled, program replay with new values, ``prog.batched`` with mapped and
constant values, ``mx.vmap`` over ``prog.fn``) must give what a forward written by hand (tests/reference.py)
gives when the same program is applied to its arrays with the same values.

Programs (tests/fuzz.py) mix what users write: saves (whole, one index, reductions), scaling, vector adds,
number and vector writes at one index, slice writes, writes at an array of indices, whole writes of a
number, function application, cross-site reads, ``interventions=`` entries, named params and dead
expressions. Sites are embeddings, layer inputs, every attention internal (q, k, v, scores, pattern, heads;
writes along the query axis, the key axis and the head axis), attention and MLP outputs, layer outputs and
the logits. Inputs are single prompts and right-padded batches. The longer run: ``python -m benchmarks.fuzz``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import check_program, fuzz_inputs, fuzz_model, programs

FUZZ = settings(max_examples=70, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    return fuzz_model()


@FUZZ
@given(program=programs(), inputs=fuzz_inputs(), seed=st.integers(0, 10_000), variants=st.integers(2, 3))
def test_random_programs_match_the_hand_written_forward_on_every_executor(model, program, inputs, seed, variants):
    check_program(model, *inputs, program, seed, variants=variants)


@FUZZ
@given(program=programs(), inputs=fuzz_inputs(padded=True), seed=st.integers(0, 10_000))
def test_random_programs_on_padded_batches_match_the_hand_written_forward(model, program, inputs, seed):
    check_program(model, *inputs, program, seed, variants=2)
