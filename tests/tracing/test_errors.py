"""Errors name the bad input, what was expected, the valid choices and the user's line."""

import mlx.core as mx
import pytest

from mlxterp.compiler import CausalityError, ModuleNotCalledError, NodeExecutionError, ShapeMismatchError
from mlxterp import interventions as iv


def this_line_plus(n: int) -> str:
    import inspect

    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno + n}"


def test_replacement_shape_mismatch_names_module_shapes_and_line(model, tokens):
    where = this_line_plus(3)
    with pytest.raises(ShapeMismatchError) as err:
        with model.trace(tokens):
            model.layers[1].output = mx.zeros((1, 7, 32))
    msg = str(err.value)
    assert "model.layers.1" in msg and "(1, 7, 64)" in msg and "(1, 7, 32)" in msg and where in msg


def test_setitem_shape_mismatch_names_module_region_and_line(model, tokens):
    where = this_line_plus(3)
    with pytest.raises(ShapeMismatchError) as err:
        with model.trace(tokens):
            model.layers[2].output[:, -1] = mx.zeros((5,))
    msg = str(err.value)
    assert "layers.2 output" in msg and "[:, -1]" in msg and "(1, 64)" in msg and "(5,)" in msg and where in msg


def test_failing_user_function_error_names_node_module_and_line(model, tokens):
    def bad(x):
        return x @ mx.zeros((3, 3))

    where = this_line_plus(2)
    with pytest.raises(NodeExecutionError) as err:
        with model.trace(tokens, interventions={"layers.0.mlp": bad}):
            pass
    msg = str(err.value)
    assert "while executing call_function" in msg and "bad" in msg and "model.layers.0.mlp" in msg
    assert where in msg and isinstance(err.value.__cause__, ValueError)


def test_writing_with_a_value_from_a_later_layer_is_a_causality_error(model, tokens):
    with pytest.raises(CausalityError, match=r"output of model.layers.0 .* depends on the output of model.layers.3"):
        with model.trace(tokens):
            model.layers[0].output = model.layers[3].output


def test_reading_a_call_that_never_happens(model, tokens):
    with pytest.raises(ModuleNotCalledError, match=r"call 5 of model.layers.1.mlp, which the forward pass never makes"):
        with model.trace(tokens):
            model.layers[1].mlp.call(5).output.save()


def test_assigning_into_a_view_is_refused_with_the_fix(model, tokens):
    with pytest.raises(ValueError, match=r"cannot assign into a view.*model.layers\[3\].output\[:, -1, :5\] = v"):
        with model.trace(tokens):
            view = model.layers[1].output[:, -1]
            view[0] = 1.0


def test_output_outside_a_trace_says_how_to_use_it(model):
    with pytest.raises(RuntimeError, match=r"layers.1.output is only available inside a trace"):
        model.layers[1].output


def test_unsaved_value_after_the_trace(model, tokens):
    with model.trace(tokens):
        h = model.layers[1].output
    with pytest.raises(RuntimeError, match="was never saved"):
        h.shape and h.value


def test_traced_value_has_no_truth_value(model, tokens):
    with pytest.raises(TypeError, match="no truth value until the trace runs"):
        with model.trace(tokens):
            if model.layers[0].output:
                pass


@pytest.mark.parametrize("bad,kind,msg", [
    ({"layers.1": 3}, TypeError, r"interventions\['layers.1'\] is a int; expected a callable"),
    ([("layers.1", iv.zero_out)], TypeError, "interventions must be a dict"),
])
def test_bad_interventions_argument(model, tokens, bad, kind, msg):
    with pytest.raises(kind, match=msg):
        model.trace(tokens, interventions=bad)


@pytest.mark.parametrize("kwargs,msg", [({"compile": "fast"}, "compile='fast' is not valid; choose True, False"),
                                        ({"capture": "some"}, "capture='some' is not valid; choose 'all'")])
def test_bad_trace_options_list_the_choices(model, tokens, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        model.trace(tokens, **kwargs)


@pytest.mark.parametrize("make,msg", [(lambda: iv.clamp(), "clamp needs min_val, max_val or both"),
                                      (lambda: iv.clamp(2.0, 1.0), "min_val=2.0 > max_val=1.0"),
                                      (lambda: iv.noise(-1.0), "non-negative"),
                                      (lambda: iv.scale("x"), "needs a number"),
                                      (lambda: iv.compose().build(), "call .add")])
def test_intervention_constructor_errors(make, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        make()


def test_model_must_be_a_module_or_name():
    from mlxterp import InterpretableModel

    with pytest.raises(TypeError, match="must be an mlx.nn.Module or a model name/path string"):
        InterpretableModel(42)


def test_mlx_function_on_a_traced_value_says_to_use_apply(model, tokens):
    with pytest.raises(TypeError, match=r"Use mlxterp.apply\(fn, ...\)"):
        with model.trace(tokens):
            mx.tanh(model.layers[0].output)
