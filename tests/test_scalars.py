"""Numpy scalars are numbers wherever mlxterp takes a number (what indexing a numpy array gives): param
defaults and values, written values, operands, interventions' factors, sampling settings. Each behaves as the
Python number of its value does: a lifted param (never a baked-in constant, so a new value does not retrace),
giving the numbers the Python number gives."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import interventions as iv
from mlxterp.generation.sampling import token_sampler
from mlxterp.scalars import is_number, python_number

SCALARS = [np.float32(0.75), np.float64(-1.5), np.int64(3), np.int32(-2)]


def close(a, b):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: type(v).__name__)
def test_is_number_and_python_number(value):
    assert is_number(value) and type(python_number(value)) in (int, float)
    assert python_number(value) == value
    assert not is_number(True) and not is_number(np.bool_(True)) and not is_number(1j) and not is_number("1")


def record(model, tokens, how, value):
    """The logits of one trace using ``value`` the way ``how`` says, and the trace's program."""
    with model.trace(tokens, capture="saved") as tr:
        h = model.layers[1].output
        if how == "operand":
            model.layers[1].output = h * value
        elif how == "item":
            model.layers[1].output[:, 2] = value
        elif how == "whole":
            model.layers[1].mlp.output = value
        elif how == "param":
            model.layers[1].output = h * mt.param("p", value)
        model.output.save("logits")
    return tr.saved_values["logits"], tr.program()


@pytest.mark.parametrize("how", ["operand", "item", "whole", "param"])
@pytest.mark.parametrize("value", SCALARS, ids=lambda v: type(v).__name__)
def test_a_numpy_scalar_in_a_trace_is_the_python_number(model, tokens, how, value):
    want, _ = record(model, tokens, how, python_number(value))
    got, prog = record(model, tokens, how, value)
    close(got, want)
    assert len(prog.params) == 1  # lifted to a param, not baked into the program
    (spec,) = prog.params.values()
    assert spec.weak and spec.default == python_number(value) and type(spec.default) is type(python_number(value))
    other = type(value)(5)
    close(prog(**{spec.name: other})["logits"], record(model, tokens, how, python_number(other))[0])


def test_a_numpy_scalar_operand_does_not_retrace(model, tokens):
    record(model, tokens, "operand", np.float32(0.5))
    with model.trace(tokens, compile=True, capture="saved"):
        model.layers[1].output = model.layers[1].output * np.float32(0.5)
    traces = model.compile_stats()["traces"]
    with model.trace(tokens, compile=True, capture="saved"):
        model.layers[1].output = model.layers[1].output * np.float32(0.25)
    assert model.compile_stats()["traces"] == traces


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: type(v).__name__)
def test_interventions_take_numpy_scalars(model, tokens, value):
    x = mx.arange(6, dtype=mx.float32)
    number = python_number(value)
    close(iv.scale(value)(x), iv.scale(number)(x))
    close(iv.replace_with(value)(x), iv.replace_with(number)(x))
    close(iv.clamp(value, None)(x), iv.clamp(number, None)(x))
    assert iv.noise(abs(value)).std == abs(number)
    with model.trace(tokens, interventions={"layers.1": iv.scale(value)}, capture="saved") as tr:
        model.output.save("logits")
    assert list(tr.program().params) == ["const_0"]


def test_interventions_refuse_what_is_not_a_number():
    with pytest.raises(TypeError, match=r"scale\(factor\) needs a number \(a Python or numpy int or float\)"):
        iv.scale("2")
    with pytest.raises(TypeError, match=r"clamp\(max_val\) needs a number"):
        iv.clamp(0.0, "1")
    with pytest.raises(ValueError, match=r"noise\(std\) needs a non-negative number"):
        iv.noise(np.float32(-1))


def test_sampling_settings_take_numpy_scalars():
    logprobs = mx.log(mx.softmax(mx.random.normal((2, 50), key=mx.random.key(0)), axis=-1))
    a = token_sampler(np.float64(0.7), np.float32(0.5), np.int64(5), np.int64(3))(logprobs)
    b = token_sampler(0.7, 0.5, 5, 3)(logprobs)
    assert mx.array_equal(a, b)
