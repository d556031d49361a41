"""Numpy scalars where Python numbers are accepted: the pre-built interventions take them, as params
(new values never retrace), with the same numbers as Python floats."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import interventions as iv

TOKENS = mx.array([[1, 5, 9, 13]])


def run(model, intervention):
    with model.trace(TOKENS, interventions={"layers.1": intervention}, compile=True, capture="saved"):
        out = model.output.save()
    return out


@pytest.mark.parametrize("make,value", [(iv.scale, 0.5), (iv.replace_with, 0.25), (iv.noise, 0.0),
                                        (lambda v: iv.clamp(-v, v), 0.5)])
@pytest.mark.parametrize("kind", [np.float32, np.float64, np.int64])
def test_interventions_take_numpy_scalars(model, make, value, kind):
    """Before: iv.scale(np.float32(0.5)) raised "scale(factor) needs a number or mx.array"."""
    expected = run(model, make(int(value) if kind is np.int64 else value))
    got = run(model, make(kind(int(value) if kind is np.int64 else value)))
    assert mx.allclose(got, expected, atol=1e-6)


def test_a_numpy_factor_is_a_param(model):
    traces = model.compile_stats()["traces"]
    outs = [run(model, iv.scale(np.float32(f))) for f in (0.5, 2.0, -1.0)]
    assert model.compile_stats()["traces"] == traces + 1
    assert mx.allclose(outs[1], run(model, iv.scale(2.0)), atol=1e-6)


@pytest.mark.parametrize("bad", [np.bool_(True), "0.5", None])
def test_interventions_still_refuse_what_is_not_a_number(bad):
    with pytest.raises((TypeError, ValueError)):
        iv.scale(bad)
    with pytest.raises((TypeError, ValueError)):
        iv.noise(bad)
    with pytest.raises(TypeError, match="clamp"):
        iv.clamp(bad, 1.0) if bad is not None else iv.clamp(1.0, "x")
