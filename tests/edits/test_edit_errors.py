"""Bad edits fail at the user's line with nothing made or modified; an edited model's forward that raises,
or is interrupted (KeyboardInterrupt from inside the forward), leaves the base model and the edited one
whole."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxterp import apply
from mlxterp import interventions as iv
from mlxterp.compiler import NodeExecutionError, ShapeMismatchError
from mlxterp.edits import EditError
from mlxterp.names import ModuleNameError
from tests.tracing.test_restoration import assert_restored, snapshot

TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25]])
HERE = __file__


def line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (errors must name it)."""
    with open(HERE) as f:
        return next(i for i, text in enumerate(f, 1) if marker in text and "line_of" not in text)


def run(model, compile=False):
    with model.trace(TOKENS, compile=compile, capture="saved"):
        out = model.output.save()
    return out


@pytest.mark.parametrize("edits, error, match", [
    ({"layers.1.mpl": iv.scale(0.5)}, ModuleNameError, "no component 'mpl'.*did you mean 'mlp'"),
    ({"layers.1.attn.hedas": iv.zero_out_heads([0])}, ModuleNameError, "did you mean 'heads'"),
    ({"layer.1": iv.scale(0.5)}, ModuleNameError, "closest valid names: layers.1"),
    ({"layers.7": iv.scale(0.5)}, ModuleNameError, "out of range; the model has 4 layers"),
    ({"layers.1": 0.5}, TypeError, r"edit\['layers.1'\] is a float; expected a callable"),
    ({}, ValueError, "empty dict"),
    ([("layers.1", iv.scale(0.5))], TypeError, "edit must be a dict"),
])
def test_bad_dict_edits_are_refused(model, edits, error, match):
    before, raw = snapshot(model), model.model(TOKENS)
    with pytest.raises(error, match=match):
        model.edit(edits)
    assert model.edits == ()
    assert_restored(model, before, TOKENS, raw)


def test_a_save_inside_an_edit_is_refused_at_its_line(model):
    with pytest.raises(EditError, match=rf"\.save\(\) inside .*{HERE}:{line_of('SAVE-HERE')}") as info:
        with model.edit() as ed:
            model.layers[1].output = model.layers[1].output * 2.0
            model.layers[1].output.save()  # SAVE-HERE
    assert "Save inside a trace of the edited model" in str(info.value)
    with pytest.raises(RuntimeError, match="ed.model exists after"):
        ed.model
    assert model.edits == ()


def test_a_shape_inside_an_edit_is_refused_at_its_line(model):
    with pytest.raises(EditError, match=rf"shape or dtype .*{HERE}:{line_of('SHAPE-HERE')}.*dict form"):
        with model.edit():
            model.layers[1].output = model.layers[1].output + mx.zeros(model.layers[1].output.shape)  # SHAPE-HERE


def test_an_edit_that_writes_nothing_is_refused(model):
    with pytest.raises(EditError, match="writes nothing"):
        with model.edit():
            model.layers[1].output * 2.0


def test_an_error_inside_the_block_makes_no_model(model):
    with pytest.raises(KeyError):
        with model.edit(inplace=True):
            model.layers[1].output = 0.0
            raise KeyError("boom")
    assert model.edits == () and mx.array_equal(run(model), model.model(TOKENS))


def test_an_index_past_a_traces_prompt_is_an_error_at_the_edits_line(model):
    with model.edit() as ed:
        model.layers[1].output[:, 9] = 0.0  # INDEX-HERE
    with pytest.raises(IndexError, match=rf"index 9 is out of range for axis 1.*{HERE}:{line_of('INDEX-HERE')}"):
        run(ed.model)
    long = mx.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]])
    with ed.model.trace(long, capture="saved"):  # a longer prompt has a position 9
        ed.model.output.save()


@pytest.mark.parametrize("compile", [False, True])
def test_a_shape_mismatch_names_the_edits_line_and_leaves_both_models_whole(model, compile):
    before, raw = snapshot(model), model.model(TOKENS)
    with model.edit() as ed:
        model.layers[2].output = model.layers[2].output + mx.zeros((3,))  # MISMATCH-HERE
    with pytest.raises((ShapeMismatchError, NodeExecutionError, ValueError),
                       match=rf"{HERE}:{line_of('MISMATCH-HERE')}"):
        run(ed.model, compile)
    assert_restored(model, before, TOKENS, raw)
    assert mx.array_equal(run(model, compile), raw)


def test_zero_out_heads_checks_its_heads(model):
    with pytest.raises(TypeError, match="head index or a non-empty list"):
        iv.zero_out_heads([])
    with pytest.raises(TypeError, match="head index"):
        iv.zero_out_heads([1.5])
    with pytest.raises(IndexError, match="head 4 is out of range; the activation has 4 heads"):
        run(model.edit({"layers.1.attn.heads": iv.zero_out_heads([0, 4])}))
    with model.edit() as ed:  # no shapes while recording: checked when each forward runs
        model.layers[1].attn.heads = iv.zero_out_heads(-5)(model.layers[1].attn.heads)  # HEADS-HERE
    where = rf"mlxterp.interventions._zeroed_heads\] .*{HERE}:{line_of('HEADS-HERE')}"
    with pytest.raises(NodeExecutionError, match=rf"{where}.*head -5 is out of range"):
        run(ed.model)


class Interrupt:
    """An activation -> activation function that raises KeyboardInterrupt on its ``at``-th call, inside the
    forward (after the model's hooks are installed)."""

    def __init__(self, at: int = 1):
        self.calls, self.at = 0, at

    def __call__(self, x: mx.array) -> mx.array:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return x


@pytest.mark.parametrize("compile", [False, True])
def test_ctrl_c_inside_an_edited_forward_leaves_both_models_whole(model, compile):
    before, raw = snapshot(model), model.model(TOKENS)
    edited = model.edit({"layers.1": iv.scale(0.5)})
    want = run(edited, compile)
    stop = Interrupt()
    with edited.edit() as ed:
        edited.layers[2].output = apply(stop, edited.layers[2].output)
    with pytest.raises(KeyboardInterrupt):
        run(ed.model, compile)
    assert stop.calls == 1
    assert_restored(model, before, TOKENS, raw)
    assert mx.array_equal(run(edited, compile), want) and mx.array_equal(run(model, compile), raw)
    assert mx.allclose(run(ed.model, compile), want, atol=1e-6)  # the next run goes through


@pytest.mark.parametrize("compile", [False, True])
def test_ctrl_c_inside_a_weight_edited_forward_leaves_the_base_whole(model, compile):
    before, raw = snapshot(model), model.model(TOKENS)
    stop = Interrupt()
    edited = model.edit_weights({"layers.2.mlp.down_proj.weight": lambda w: w * 0.5}).edit({"layers.3": stop})
    with pytest.raises(KeyboardInterrupt):  # compiled: while mx.compile traces, with the arrays as placeholders
        run(edited, compile)
    assert_restored(model, before, TOKENS, raw)
    assert mx.array_equal(run(model, compile), raw)
    assert not mx.allclose(run(edited, compile), raw, atol=1e-3)
