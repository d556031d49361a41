"""Regression: an unused expression holding a constant must not shift the values of later constants.

The executor once built its params list from every constant of the recorded graph while lifting numbered
only the constants that survive dead-code elimination, so a dead ``* 2.0`` became the factor of a live
``* 0.5``. Params now carry the id of the constant they come from. Checked against a hand-written forward.
"""

import mlx.core as mx
import pytest

from tests.models import reference_llama_forward

MODES = [False, True]


@pytest.mark.parametrize("compile", MODES)
def test_dead_scaling_does_not_take_the_place_of_a_live_one(model, tokens, compile):
    for _ in range(2):  # the second run is a cache hit: values must come from the new trace
        with model.trace(tokens, compile=compile, capture="saved"):
            unused = model.layers[1].output * 2.0  # noqa: F841 (never used)
            model.layers[2].output = model.layers[2].output * 0.5
            out = model.output.save()
        expected = reference_llama_forward(model.model, tokens, {2: lambda h: h * 0.5})
        assert mx.allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compile", MODES)
def test_dead_array_expression_does_not_leak_into_a_later_add(model, tokens, compile):
    with model.trace(tokens, compile=compile, capture="saved"):
        out1 = model.layers[1].output
        junk = out1 + mx.ones(64) * 100  # noqa: F841 (never used)
        model.layers[1].output = out1 + mx.zeros(64)
        out = model.output.save()
    expected = reference_llama_forward(model.model, tokens)
    assert mx.allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compile", MODES)
def test_dead_constants_between_live_ones_with_new_values(model, tokens, compile):
    # One structure run with three sets of values: each run must use its own values.
    for a, b in [(0.5, 0.25), (2.0, -1.0), (0.0, 3.0)]:
        with model.trace(tokens, compile=compile, capture="saved"):
            model.layers[0].output = model.layers[0].output * a
            dead = model.layers[1].output * 7.0 + mx.full((64,), 9.0)  # noqa: F841
            model.layers[2].output = model.layers[2].output + b
            out = model.output.save()
        expected = reference_llama_forward(model.model, tokens, {0: lambda h: h * a, 2: lambda h: h + b})
        assert mx.allclose(out, expected, atol=1e-5, rtol=1e-5), (a, b)
