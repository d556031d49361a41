"""The adapter registry: lookup by model_type (and by mlx-lm module), registration, fallback to name
guessing for unknown models and for models an adapter does not fit, and canonical names."""

from __future__ import annotations

import dataclasses
import warnings

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxterp import InterpretableModel, ModuleNameError
from mlxterp import adapters
from tests.families import FAMILIES, build
from tests.models import tiny_llama_module


def test_every_family_of_the_runner_is_registered():
    assert set(FAMILIES) <= set(adapters.registered())


def test_model_type_without_a_registry_entry_falls_back_to_the_mlx_lm_module():
    raw = tiny_llama_module()
    raw.model_type = "my_llama_finetune"  # e.g. xverse or iquestcoder: mlx-lm runs them as llama
    assert adapters.architecture_for(raw).family == "llama"


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.blocks = [nn.Linear(8, 8) for _ in range(2)]

    def __call__(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x)
        return x


def test_unknown_model_has_no_architecture_and_guesses_names():
    model = InterpretableModel(_Custom(), layer_attr="blocks")
    assert model.architecture is None and len(model.layers) == 2
    with model.trace(mx.array([[1, 2, 3]])) as tr:
        pass
    assert len(tr.activations) == 4


def test_an_adapter_that_does_not_fit_warns_and_falls_back():
    raw = tiny_llama_module()
    raw.model_type = "mixtral"  # a llama mistaken for a mixtral: no block_sparse_moe
    with pytest.warns(UserWarning, match=r"the 'mixtral' adapter does not fit .*block_sparse_moe"):
        model = InterpretableModel(raw)
    assert model.architecture is None
    assert model._index.resolve("layers.1.mlp") == "model.layers.1.mlp"


def test_register_a_family():
    raw = tiny_llama_module()
    raw.model_type = "test_renamed_llama"
    arch = dataclasses.replace(adapters.architecture_for(tiny_llama_module()), family="renamed", mlp="mlp.down_proj")
    adapters.register("test_renamed_llama", arch)
    try:
        model = InterpretableModel(raw)
        assert model._index.resolve("layers.2.mlp") == "model.layers.2.mlp.down_proj"
    finally:
        adapters.registry._REGISTRY.pop("test_renamed_llama")


def test_register_rejects_bad_arguments():
    with pytest.raises(ValueError, match="model_type"):
        adapters.register("", adapters.architecture_for(tiny_llama_module()))
    with pytest.raises(TypeError, match="architecture"):
        adapters.register("x", 3)


@pytest.mark.parametrize("family,name,path", [
    ("mixtral", "layers.1.mlp", "model.layers.1.block_sparse_moe"),
    ("internlm2", "layers.1.mlp.w1", "model.layers.1.feed_forward.w1"),
    ("internlm2", "layers.0.attn", "model.layers.0.attention"),
    ("exaone", "layers.0.attn", "transformer.h.0.attn.attention"),  # the literal 'attn' is never called
    ("gpt2", "embed", "model.wte"),
    ("gpt_neox", "unembed", "model.embed_out"),
    ("phi", "final_norm", "model.final_layernorm"),
    ("gemma2", "layers.0.ln2", "model.layers.0.pre_feedforward_layernorm"),
])
def test_canonical_names(family, name, path):
    model = InterpretableModel(build(family))
    assert model._index.resolve(name) == path
    proxy = model.layers[int(name.split(".")[1])] if name.startswith("layers") else model
    for part in name.split(".")[2:] if name.startswith("layers") else [name]:
        proxy = getattr(proxy, part)
    assert proxy.path == path


def test_seed_names_keep_working_next_to_canonical_ones():
    model = InterpretableModel(build("mixtral"))
    assert model._index.resolve("model.model.layers.1.block_sparse_moe") == "model.layers.1.block_sparse_moe"
    assert model._index.resolve("layers.1.self_attn") == model._index.resolve("layers.1.attn")


def test_a_missing_canonical_part_says_why():
    model = InterpretableModel(build("mamba"))
    with pytest.raises(ModuleNameError, match="state-space model"):
        model._index.resolve("layers.0.attn")


def test_layer_attr_naming_the_adapters_list_keeps_the_adapter():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpt2 = InterpretableModel(build("gpt2"), layer_attr="h")  # the seed's way for GPT-2
    assert gpt2.architecture.family == "gpt2" and gpt2._index.resolve("h.1.attn") == "model.h.1.attn"
