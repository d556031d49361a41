"""Module names: canonical paths, accepted forms, and errors that list the closest valid names."""

import pytest

from mlxterp import InterpretableModel, ModuleNameError, ModuleProxy
from mlxterp import interventions as iv
from tests.models import CharTokenizer, tiny_gpt2_module


@pytest.mark.parametrize("name", ["model.layers.3.mlp", "layers.3.mlp", "model.model.layers.3.mlp"])
def test_accepted_forms_resolve_to_the_canonical_path(model, name):
    assert model._index.resolve(name) == "model.layers.3.mlp"


@pytest.mark.parametrize("name,expected", [("layers.1.attn", "model.layers.1.self_attn"),
                                           ("layers.1.attn.q_proj", "model.layers.1.self_attn.q_proj"),
                                           ("norm", "model.norm"), ("lm_head", "lm_head")])
def test_aliases_and_root_relative_names(model, name, expected):
    assert model._index.resolve(name) == expected


def test_unknown_name_lists_closest_valid_names(model):
    with pytest.raises(ModuleNameError, match=r"unknown module name 'layrs.3.mlp'.*closest valid names: layers.3.mlp"):
        model._index.resolve("layrs.3.mlp")


def test_out_of_range_layer_names_the_valid_range(model, tokens):
    with pytest.raises(ModuleNameError, match=r"layer index 9 is out of range; the model has 4 layers \(0 to 3\)"):
        model.trace(tokens, interventions={"layers.9": iv.zero_out})


def test_missing_component_lists_the_layers_components(model, tokens):
    with pytest.raises(ModuleNameError, match=r"has no component 'mlpp'; its components are: input_layernorm, mlp"):
        model.trace(tokens, interventions={"layers.1.mlpp": iv.zero_out})


def test_get_activation_with_an_unknown_name_raises(model, tokens):
    with model.trace(tokens) as tr:
        pass
    with pytest.raises(ModuleNameError, match="no component 'mlpp'; its components are"):
        tr.get_activation("layers.2.mlpp")
    with pytest.raises(ModuleNameError, match="closest valid names: layers.2.mlp"):
        tr.get_activation("layer.2.mlp")


def test_layers_proxy_index_len_iter_and_range_errors(model):
    assert len(model.layers) == 4
    assert isinstance(model.layers[3], ModuleProxy)
    assert model.layers[-1].path == "model.layers.3"
    assert [layer.name for layer in model.layers] == [f"layers.{i}" for i in range(4)]
    assert type(model.layers[3]).__name__ == "ModuleProxy"
    with pytest.raises(IndexError, match=r"layer index 4 is out of range: the model has 4 layers \(0 to 3\)"):
        model.layers[4]


def test_module_proxy_attribute_errors_list_components(model):
    with pytest.raises(AttributeError, match="has no component or attribute 'mlpp'; its components are"):
        model.layers[0].mlpp


def test_module_proxy_reaches_weights_and_sub_modules(model):
    assert model.layers[0].mlp.gate_proj.weight.shape == (128, 64)
    assert model.layers[0].attn.path == "model.layers.0.self_attn"


def test_named_modules_yields_canonical_paths(model):
    names = [n for n, _ in model.named_modules()]
    assert "model.layers.3.mlp" in names and "" in names


def test_gpt2_layer_attr_h():
    m = InterpretableModel(tiny_gpt2_module(), tokenizer=CharTokenizer(), layer_attr="h")
    assert len(m.layers) == 3 and m.layers[1].path == "model.h.1"
    assert m._index.resolve("h.1.attn") == "model.h.1.attn"
    assert m._index.resolve("h.1.self_attn") == "model.h.1.attn"


def test_wrong_layer_attr_is_an_attribute_error_listing_lists(llama_module):
    with pytest.raises(AttributeError, match=r"no layer list at layer_attr='transformer'.*model.layers"):
        InterpretableModel(llama_module, layer_attr="transformer")


def test_dotted_layer_attr(llama_module):
    m = InterpretableModel(llama_module, layer_attr="model.layers")
    assert len(m.layers) == 4 and m.layers[0].path == "model.layers.0"
