"""Module proxy attributes: an nn.Module method name is never taken for a component or an internal
(``attn.keys`` is an error that suggests ``k``), and numpy integers index layers and calls."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import ModuleNameError


@pytest.mark.parametrize("attr,hint", [("keys", "'k'"), ("values", "'v'"), ("items", None), ("update", None),
                                       ("parameters", None)])
def test_an_nn_module_method_is_not_a_proxy_attribute(model, attr, hint):
    """Before: ``attn.keys`` was dict.keys of the attention module (``.save()`` then failed on a method)."""
    message = rf"has no component or attribute '{attr}' \('{attr}' is a method of every nn.Module.*internals are: q, k"
    with pytest.raises(AttributeError, match=message) as info:
        model.layers[0].attn.__getattr__(attr)
    assert hint is None or f"did you mean {hint}" in str(info.value)
    with pytest.raises(AttributeError, match=message):
        with model.trace("hi"):
            getattr(model.layers[0].attn, attr).save()


def test_the_module_itself_still_has_its_methods_and_weights(model):
    attn = model.layers[0].attn
    assert list(attn.module.keys()) == list(attn.module.keys()) and "q_proj" in attn.module.keys()
    assert attn.q_proj.weight.shape == (64, 64)


def test_a_name_that_is_a_method_suggests_the_internal(model):
    with pytest.raises(ModuleNameError, match="no component 'keys'.*did you mean 'k'"):
        model.trace("hi", interventions={"layers.0.attn.keys": lambda x: x})


def test_setting_a_method_name_suggests_the_internal(model):
    with pytest.raises(AttributeError, match=r"cannot set 'keys'.*\.k, \.v.*did you mean 'k'"):
        with model.trace("hi"):
            model.layers[0].attn.keys = 0


def test_a_misspelt_component_suggests_the_closest(model):
    with pytest.raises(AttributeError, match="did you mean 'mlp'"):
        model.layers[0].mlpp


@pytest.mark.parametrize("index", [np.int64(2), np.int32(-1), np.uint8(1)])
def test_numpy_integers_index_layers_calls_and_lists(model, index):
    """Before: ``model.layers[np.int64(2)]`` raised "layer index must be an int, got int64"."""
    assert model.layers[index].path == model.layers[int(index)].path
    with model.trace(mx.array([[1, 2, 3]])) as tr:
        model.layers[index].output.save("a")
        model.layers[int(index)].mlp.call(np.int64(0)).output.save("b")
    assert tr.saved_values["a"].shape == (1, 3, 64) and tr.saved_values["b"].shape == (1, 3, 64)
