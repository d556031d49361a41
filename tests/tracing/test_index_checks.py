"""Integer indices are checked against the shapes known while recording: an IndexError naming the module,
the index, the axis and its length at the user's line (MLX gives garbage for ``x[5]`` of 2 rows, crashes
on ``x[-3]`` and fails with ``[squeeze] Cannot squeeze axis 1`` past the end of axis 1). Valid indices
give the values of a hand-written reference forward."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import apply
from tests.models import reference_llama_forward

MODES = pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])


def this_line_plus(n: int) -> str:
    import inspect

    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno + n}"


@pytest.fixture()
def prompt():
    return mx.array([[1, 5, 9, 13, 17, 21]])  # 6 tokens


def layer_outputs(model, tokens):
    seen = {}

    def keep(i):
        def fn(h):
            seen[i] = h
            return h
        return fn

    reference_llama_forward(model.model, tokens, {i: keep(i) for i in range(4)})
    return seen


def test_reading_a_position_past_the_prompt_names_module_index_axis_and_length(model, prompt):
    where = this_line_plus(3)
    with pytest.raises(IndexError) as err:
        with model.trace(prompt):
            model.layers[0].output[:, 99].save()
    msg = str(err.value)
    assert "index 99" in msg and "axis 1" in msg and "layers.0 output" in msg and "length 6" in msg, msg
    assert "the input has 6 tokens" in msg and "valid indices are -6 to 5" in msg and where in msg, msg


def test_writing_a_position_past_the_prompt_is_an_index_error(model, prompt):
    where = this_line_plus(3)
    with pytest.raises(IndexError) as err:
        with model.trace(prompt):
            model.layers[2].output[:, 99] = mx.zeros((64,))
    msg = str(err.value)
    assert "index 99" in msg and "axis 1" in msg and "layers.2 output" in msg and where in msg, msg


@pytest.mark.parametrize("index,axis,length", [
    ((3,), 0, 1),                       # MLX returns garbage here
    ((slice(None), -7), 1, 6),          # MLX crashes on negative out-of-range indices
    ((0, 0, 64), 2, 64),
    ((Ellipsis, 64), 2, 64),
    ((Ellipsis, 6, slice(None)), 1, 6),
    ((slice(None), None, np.int64(6)), 1, 6),
], ids=["batch", "negative", "hidden", "ellipsis", "ellipsis_middle", "newaxis_numpy_int"])
def test_out_of_range_integer_indices_are_index_errors(model, prompt, index, axis, length):
    with pytest.raises(IndexError, match=rf"index -?\d+ is out of range for axis {axis} of layers.1 output, "
                                         rf"which has length {length}"):
        with model.trace(prompt):
            model.layers[1].output[index].save()


def test_too_many_indices_is_an_index_error(model, prompt):
    with pytest.raises(IndexError, match=r"too many indices for layers.1 output: \[0, 0, 0, 0\] indexes 4 axes"):
        with model.trace(prompt):
            model.layers[1].output[0, 0, 0, 0].save()


def test_index_on_a_derived_value_is_checked(model, prompt):
    with pytest.raises(IndexError, match=r"index 6 is out of range for axis 1 of the traced value %\d+ \(binary"):
        with model.trace(prompt):
            (model.layers[1].output * 2.0)[:, 6].save()


def test_user_functions_are_not_called_to_learn_a_shape(model, prompt):
    calls = []

    def side_effect(h):
        calls.append(1)
        return h

    with model.trace(prompt, compile=False, capture="saved"):
        apply(side_effect, model.layers[1].output)[:, -1].save()
    assert len(calls) == 1  # the run only; an index on an unknown shape is left to the run


@MODES
def test_valid_index_forms_give_the_reference_values(model, prompt, compile):
    ref = layer_outputs(model, prompt)
    forms = {
        "neg": (slice(None), -6), "last": (slice(None), -1), "slice_past_end": (slice(None), slice(2, 99)),
        "ellipsis": (Ellipsis, -1), "newaxis": (slice(None), None, 5), "numpy_int": (0, np.int64(5)),
        "array": (slice(None), mx.array([0, 5])), "int_batch": (0,), "full": (0, 5, 63),
    }
    with model.trace(prompt, compile=compile, capture="saved"):
        got = {name: model.layers[1].output[index].save() for name, index in forms.items()}
    for name, index in forms.items():
        assert mx.allclose(got[name].value, ref[1][index], atol=1e-5), name


@MODES
def test_valid_setitem_at_the_last_position(model, prompt, compile):
    def write_last(h):
        h = mx.array(h)
        h[:, -1] = 0.0
        return h

    with model.trace(prompt, compile=compile, capture="saved"):
        model.layers[1].output[:, 5] = 0.0
        out = model.output.save()
    assert mx.allclose(out, reference_llama_forward(model.model, prompt, {1: write_last}), atol=1e-5)


def test_padded_batch_is_checked_against_the_padded_width(model):
    with model.trace(["ab", "abcd"], capture="saved"):  # BOS + chars: widths 3 and 5, padded to 5
        last = model.layers[0].output[:, 4].save()
    assert last.shape == (2, 64)
    with pytest.raises(IndexError, match="which has length 5"):
        with model.trace(["ab", "abcd"]):
            model.layers[0].output[:, 5].save()


def test_residual_values_are_checked(model, prompt):
    with pytest.raises(IndexError, match=r"index 6 is out of range for axis 1 of layers.1 resid_mid, which has length 6"):
        with model.trace(prompt):
            model.layers[1].resid_mid[:, 6].save()
    with model.trace(prompt, capture="saved"):
        last = model.layers[1].resid_mid[:, 5].save()
    assert last.shape == (1, 64)
