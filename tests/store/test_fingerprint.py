"""The store's model fingerprint covers every weight byte: any single edit of any parameter changes it, so
a store is never resumed with another model's activations."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

from mlxterp import InterpretableModel, batch_get_activations
from mlxterp.store import StoreMismatchError
from mlxterp.store.manifest import model_identity
from tests.models import CharTokenizer, tiny_llama_module

PROMPTS = [f"prompt {i}" for i in range(6)]


def flip_one_bit(module, name: str, element: int) -> None:
    """Flip the lowest bit of one element of parameter ``name`` of ``module`` (its bytes change by one bit)."""
    value = dict(tree_flatten(module.parameters()))[name]
    raw = np.array(value.view(mx.uint16) if value.dtype == mx.bfloat16 else value).copy()
    flat = raw.reshape(-1).view(np.uint8)
    flat[(element % raw.size) * raw.itemsize] ^= 1
    new = mx.array(raw)
    module.load_weights([(name, new.view(mx.bfloat16) if value.dtype == mx.bfloat16 else new)], strict=False)
    mx.eval(module.parameters())


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("where", ["one MLP neuron", "one embedding row"])
def test_zeroing_one_neuron_or_one_embedding_row_changes_the_fingerprint(quantize, where):
    module = tiny_llama_module(seed=4, quantize=quantize)
    before = model_identity(InterpretableModel(module))["fingerprint"]
    if where == "one MLP neuron":  # one column of the down projection: one intermediate unit's output
        w = module.model.layers[2].mlp.down_proj.weight
        module.model.layers[2].mlp.down_proj.weight = mx.concatenate([w[:, :5], w[:, 5:6] * 0, w[:, 6:]], axis=1)
    else:
        w = module.model.embed_tokens.weight
        module.model.embed_tokens.weight = mx.concatenate([w[:37], w[37:38] * 0, w[38:]], axis=0)
    assert model_identity(InterpretableModel(module))["fingerprint"] != before


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_single_element_edit_of_any_parameter_changes_the_fingerprint(data):
    module = tiny_llama_module(seed=4, quantize=data.draw(st.booleans(), "quantized"))
    names = [name for name, _ in tree_flatten(module.parameters())]
    before = model_identity(InterpretableModel(module))["fingerprint"]
    name = data.draw(st.sampled_from(names), "parameter")
    flip_one_bit(module, name, data.draw(st.integers(0, 1 << 30), "element"))
    assert model_identity(InterpretableModel(module))["fingerprint"] != before


def test_a_store_is_not_resumed_with_an_edited_model(tmp_path):
    module = tiny_llama_module(seed=4)
    model = InterpretableModel(module, tokenizer=CharTokenizer())
    batch_get_activations(model, PROMPTS, layers=[1], out=tmp_path / "s", shard_size=2, progress=False)
    w = module.model.layers[1].mlp.down_proj.weight
    module.model.layers[1].mlp.down_proj.weight = mx.concatenate([w[:, :5], w[:, 5:6] * 0, w[:, 6:]], axis=1)
    with pytest.raises(StoreMismatchError, match="model: the store has Model"):
        batch_get_activations(model, PROMPTS, layers=[1], out=tmp_path / "s", shard_size=2, progress=False)


def test_the_fingerprint_of_an_unchanged_model_is_stable():
    a = model_identity(InterpretableModel(tiny_llama_module(seed=4)))
    b = model_identity(InterpretableModel(tiny_llama_module(seed=4)))
    assert a == b and a["fingerprint_covers"] == "every parameter byte"
