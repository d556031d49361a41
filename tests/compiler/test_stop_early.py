"""Stopping the forward after the last module a program needs: same results, the rest never runs, the
model restored."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.compiler import is_hooked
from tests.models import tiny_llama_module
from tests.reference import llama_forward


class CountingLinear(nn.Linear):
    calls = 0

    def __call__(self, x):
        CountingLinear.calls += 1
        return super().__call__(x)


@pytest.fixture()
def counted():
    module = tiny_llama_module(seed=2)
    module.lm_head.__class__ = CountingLinear  # the vocabulary projection counts its calls
    return InterpretableModel(module)


@pytest.mark.parametrize("compile", [False, True])
def test_a_trace_that_reads_only_early_layers_stops_there(counted, tokens, compile):
    counted._probe(tokens)  # the probe (a lazy, never evaluated forward) learns the shapes once per shape
    CountingLinear.calls = 0
    with counted.trace(tokens, capture="saved", compile=compile) as tr:
        counted.layers[0].output = counted.layers[0].output * 0.5
        h = counted.layers[1].output.save()
    assert CountingLinear.calls == 0  # the rest of the forward was not even built
    expected = {}
    llama_forward(counted.model, tokens, lambda site, x: expected.setdefault(site, x * 0.5 if site == ("layer", 0)
                                                                              else x))
    np.testing.assert_allclose(np.array(h), np.array(expected[("layer", 1)]), rtol=1e-5, atol=1e-5)
    assert not any(is_hooked(m) for _, m in counted.named_modules())
    with pytest.raises(RuntimeError, match="the forward stopped after the output of layers.1"):
        tr.output


def test_reading_the_output_or_capturing_everything_runs_the_whole_forward(counted, tokens):
    counted._probe(tokens)
    CountingLinear.calls = 0
    with counted.trace(tokens, capture="saved"):
        counted.layers[1].output.save()
        counted.output.save()
    with counted.trace(tokens) as tr:  # capture="all"
        counted.layers[1].output.save()
    assert CountingLinear.calls == 2 and tr.output.shape == (1, 7, 128)


def test_a_program_stops_early_too(counted, tokens):
    with counted.trace(tokens, capture="saved") as tr:
        counted.layers[2].input.save("x")
    prog = tr.program()
    other = mx.array([[3, 4, 5]])
    counted._probe(other)
    CountingLinear.calls = 0
    out = prog(tokens=other)["x"]
    mx.eval(out)
    assert CountingLinear.calls == 0 and out.shape == (1, 3, 64)
