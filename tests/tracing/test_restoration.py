"""The model is unchanged after any trace: normal, raising in the block, raising in the forward."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlxterp.compiler import NodeExecutionError, ShapeMismatchError, is_hooked
from mlxterp import interventions as iv


def snapshot(model):
    classes = {p: type(m) for p, m in model.model.named_modules()}
    params = {k: mx.array(v) for k, v in tree_flatten(model.model.parameters())}
    return classes, params


def assert_restored(model, before, tokens, raw):
    classes, params = before
    now_classes, now_params = snapshot(model)
    assert now_classes == classes
    assert not any(is_hooked(m) for _, m in model.model.named_modules())
    assert params.keys() == now_params.keys()
    assert all(mx.array_equal(params[k], now_params[k]) for k in params)
    assert mx.array_equal(model.model(tokens), raw)


@pytest.mark.parametrize("compile", [False, True])
def test_restored_after_a_normal_trace_with_interventions(model, tokens, compile):
    before, raw = snapshot(model), model.model(tokens)
    with model.trace(tokens, interventions={"layers.1": iv.scale(3.0)}, compile=compile):
        model.layers[2].mlp.output[:, 0] = 0.0
        model.output.save()
    assert_restored(model, before, tokens, raw)


def test_restored_after_an_exception_inside_the_block(model, tokens):
    before, raw = snapshot(model), model.model(tokens)
    with pytest.raises(KeyError, match="boom"):
        with model.trace(tokens, interventions={"layers.1": iv.zero_out}):
            model.layers[0].output.save()
            raise KeyError("boom")
    assert_restored(model, before, tokens, raw)


@pytest.mark.parametrize("compile", [False, True])
def test_restored_after_an_exception_inside_the_forward(model, tokens, compile):
    before, raw = snapshot(model), model.model(tokens)

    def explode(x):
        raise RuntimeError("user function failed")

    with pytest.raises(NodeExecutionError, match="user function failed"):
        with model.trace(tokens, interventions={"layers.2": explode}, compile=compile):
            pass
    assert_restored(model, before, tokens, raw)


def test_restored_after_a_shape_mismatch(model, tokens):
    before, raw = snapshot(model), model.model(tokens)
    with pytest.raises(ShapeMismatchError):
        with model.trace(tokens):
            model.layers[1].output = mx.zeros((2, 3))
    assert_restored(model, before, tokens, raw)


def test_isinstance_and_weights_visible_through_hooks(model, tokens):
    from mlx_lm.models.llama import TransformerBlock

    seen = {}

    def look(x):
        layer = model.model.model.layers[1]
        seen["isinstance"] = isinstance(layer, TransformerBlock)
        seen["params"] = len(tree_flatten(layer.parameters()))
        return x

    with model.trace(tokens, interventions={"layers.1": look}, compile=False):
        pass
    assert seen == {"isinstance": True, "params": 9}


def test_a_second_trace_after_a_failed_one_works(model, tokens):
    with pytest.raises(ShapeMismatchError):
        with model.trace(tokens):
            model.layers[1].output = mx.zeros((2, 3))
    with model.trace(tokens) as tr:
        out = model.output.save()
    assert mx.array_equal(out, model.model(tokens))
    assert tr.mode == "eager"
