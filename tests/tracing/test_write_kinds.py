"""Writes of the wrong kind: a Python number fills the activation's shape *and dtype*; a list, a string,
``None`` (or an intervention function returning a non-array) is an error naming the module, the value
and the user's line. Checked against a hand-written reference forward, eager and compiled."""

import mlx.core as mx
import pytest

from mlxterp import InterpretableModel, apply
from tests.models import reference_llama_forward, tiny_llama_module

MODES = pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])


def this_line_plus(n: int) -> str:
    import inspect

    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno + n}"


@pytest.fixture(scope="module")
def bf16_module():
    module = tiny_llama_module(layers=3)
    module.set_dtype(mx.bfloat16)
    return module


@pytest.fixture()
def bf16(bf16_module):
    return InterpretableModel(bf16_module)


def filled(value):
    return lambda h: mx.full(h.shape, value, dtype=h.dtype)


def write_and_run(model, tokens, compile, module: str, value):
    """Write ``value`` to ``module`` (``"output"`` or ``"input"`` of layers[k]); the written value and logits."""
    layer, phase = module.split(".")
    target = model.layers[int(layer)]
    with model.trace(tokens, compile=compile, capture="saved"):
        setattr(target, phase, value)
        written = getattr(target, phase).save()
        out = model.output.save()
    return written, out


@MODES
@pytest.mark.parametrize("value", [0, 0.5, -3], ids=["int0", "float", "int"])
def test_scalar_output_write_takes_the_activation_shape_and_dtype(bf16, tokens, value, compile):
    written, out = write_and_run(bf16, tokens, compile, "1.output", value)
    assert written.dtype == mx.bfloat16 and written.shape == (1, 7, 64)
    assert mx.array_equal(written, mx.full((1, 7, 64), value, dtype=mx.bfloat16))
    expected = reference_llama_forward(bf16.model, tokens, {1: filled(value)})
    assert out.dtype == expected.dtype and mx.array_equal(out, expected)


@MODES
def test_scalar_write_of_a_float32_model_stays_float32(model, tokens, compile):
    written, out = write_and_run(model, tokens, compile, "1.output", 0)
    assert written.dtype == mx.float32
    assert mx.allclose(out, reference_llama_forward(model.model, tokens, {1: filled(0)}), atol=1e-5)


@MODES
def test_scalar_input_write_takes_the_input_shape_and_dtype(bf16, tokens, compile):
    # layer 2 receives layer 1's output: writing its input equals filling layer 1's output
    written, out = write_and_run(bf16, tokens, compile, "2.input", 0.25)
    assert written.dtype == mx.bfloat16 and written.shape == (1, 7, 64)
    assert mx.array_equal(out, reference_llama_forward(bf16.model, tokens, {1: filled(0.25)}))


@MODES
def test_scalar_setitem_keeps_the_activation_dtype(bf16, tokens, compile):
    def zero_first(h):
        h = mx.array(h)
        h[:, 0] = 0
        return h

    with bf16.trace(tokens, compile=compile, capture="saved"):
        bf16.layers[1].output[:, 0] = 0
        written = bf16.layers[1].output.save()
        out = bf16.output.save()
    assert written.dtype == mx.bfloat16
    assert mx.array_equal(out, reference_llama_forward(bf16.model, tokens, {1: zero_first}))


BAD_VALUES = {
    "list": ([1, 2, 3], "list [1, 2, 3]"),
    "str": ("abc", "str 'abc'"),
    "none": (None, "None"),
    "dict": ({"a": 1}, "dict {'a': 1}"),
    "tuple_of_numbers": ((1, 2), "tuple (1, 2)"),
}


WRITES = {"output": "model.layers[1].output = value", "input": "model.layers[1].input = value",
          "setitem": "model.layers[1].output[:, -1] = value"}


def _write(model, kind, value):
    if kind == "output":
        model.layers[1].output = value
    elif kind == "input":
        model.layers[1].input = value
    else:
        model.layers[1].output[:, -1] = value


def _write_line(kind):
    import inspect

    lines, start = inspect.getsourcelines(_write)
    line = start + next(i for i, text in enumerate(lines) if text.strip() == WRITES[kind])
    return f"{__file__}:{line}"


@MODES
@pytest.mark.parametrize("kind", ["output", "input", "setitem"])
@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_written_value_is_a_type_error_naming_module_value_and_line(model, tokens, name, kind, compile):
    value, shown = BAD_VALUES[name]
    where = _write_line(kind)
    with pytest.raises(TypeError) as err:
        with model.trace(tokens, compile=compile):
            _write(model, kind, value)
    msg = str(err.value)
    assert "layers.1" in msg and kind.replace("setitem", "output") in msg, msg
    assert shown in msg and where in msg, msg
    with model.trace(tokens, compile=compile, capture="saved"):  # the model still works
        out = model.output.save()
    assert mx.allclose(out, reference_llama_forward(model.model, tokens), atol=1e-5)


@MODES
@pytest.mark.parametrize("returned,shown", [(None, "None"), ([1.0, 2.0], "list"), ("x", "str"), (0.5, "float")],
                         ids=["none", "list", "str", "float"])
def test_intervention_function_returning_a_non_array_is_an_error(model, tokens, returned, shown, compile):
    def bad_hook(x):
        return returned

    where = this_line_plus(2)
    with pytest.raises(TypeError) as err:
        with model.trace(tokens, interventions={"layers.1": bad_hook}, compile=compile):
            pass
    msg = str(err.value)
    assert "model.layers.1" in msg and "interventions['layers.1']" in msg and "bad_hook" in msg, msg
    assert f"returned {shown}" in msg and where in msg, msg


@MODES
def test_applied_function_returning_none_as_a_write_is_an_error(model, tokens, compile):
    where = this_line_plus(3)
    with pytest.raises(TypeError) as err:
        with model.trace(tokens, compile=compile):
            model.layers[1].output = apply(lambda x: None, model.layers[1].output)
    msg = str(err.value)
    assert "model.layers.1" in msg and "None" in msg and where in msg, msg


@MODES
def test_numpy_and_array_writes_still_work(model, tokens, compile):
    import numpy as np

    with model.trace(tokens, compile=compile, capture="saved"):
        model.layers[1].output = np.zeros((1, 7, 64), dtype=np.float32)
        model.layers[2].output[:, 0] = mx.ones((64,))
        out = model.output.save()

    def ones_first(h):
        h = mx.array(h)
        h[:, 0] = 1.0
        return h

    expected = reference_llama_forward(model.model, tokens, {1: lambda h: mx.zeros_like(h), 2: ones_first})
    assert mx.allclose(out, expected, atol=1e-5)
