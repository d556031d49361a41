"""StateCompiled never returns a result that MLX's compile cache served for a call it did not trace.

MLX caches compiled traces per thread by the address of the Python function it was given; a trace left by
a freed function can be matched by a new function at the same address (seen in the test suite after the
thread tests: a compiled trace returned another program's logits). StateCompiled gives every compiled
function a unique serial (a constant argument, part of MLX's match) and checks that every first call of
a signature really traced. The check is tested here by handing a StateCompiled another one's compiled
function, already traced for the same shapes: what a stale cache entry looks like from the inside.
"""

import logging

import mlx.core as mx
import mlx.nn as nn

from mlxterp.compiler.state_compile import StateCompiled


def test_a_first_call_served_from_the_cache_is_recompiled_and_run_again(caplog):
    module = nn.Linear(4, 4)
    x = mx.ones((2, 4))
    doubled = StateCompiled(lambda v: module(v) * 2.0, module)
    negated = StateCompiled(lambda v: -module(v), module)
    assert mx.allclose(doubled(x), module(x) * 2.0)
    negated._compiled = doubled._compiled  # as if MLX's cache held another function's trace for it
    with caplog.at_level(logging.WARNING, logger="mlxterp.compiler.state_compile"):
        out = negated(x)
    assert mx.allclose(out, -module(x)), "the other function's result was returned"
    assert "served a first call" in caplog.text
    assert mx.allclose(negated(x), -module(x)) and mx.allclose(doubled(x), module(x) * 2.0)


def test_first_calls_trace_once_per_shape_without_warnings(caplog):
    module = nn.Linear(4, 4)
    traces = []

    def fn(v):
        traces.append(v.shape)
        return module(v)

    compiled = StateCompiled(fn, module)
    with caplog.at_level(logging.WARNING, logger="mlxterp.compiler.state_compile"):
        for shape in [(1, 4), (1, 4), (3, 4), (1, 4), (3, 4)]:
            x = mx.ones(shape)
            assert mx.allclose(compiled(x), module(x))
    assert traces == [(1, 4), (3, 4)] and not caplog.text


def test_a_nested_compiled_call_does_not_count_as_the_outer_trace():
    module = nn.Linear(4, 4)
    inner = StateCompiled(lambda v: module(v) + 1.0, module)
    outer = StateCompiled(lambda v: inner(v) * 3.0, module)
    x = mx.ones((2, 4))
    assert mx.allclose(outer(x), (module(x) + 1.0) * 3.0)
    assert mx.allclose(outer(x * 2), (module(x * 2) + 1.0) * 3.0)
