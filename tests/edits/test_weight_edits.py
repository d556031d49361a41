"""Weight edits: the edited model runs the new weight (checked against the hand-written forward on a separate
copy of the model), shares every other weight and module with the base, leaves the base's tree, weights
and cached programs untouched, dequantizes an edited quantized layer (saying so), and inplace edits are
undone by clear_edits."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxterp import InterpretableModel
from mlxterp import interventions as iv
from mlxterp.compiler.locks import model_lock
from mlxterp.edits import EditError
from mlxterp.names import ModuleNameError
from mlxterp.store.manifest import model_identity
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import dequantized, llama_forward

TOKENS = mx.array([[1, 5, 9, 13, 17, 21, 25]])
NAME = "layers.2.mlp.down_proj.weight"
U = mx.random.normal((64,), key=mx.random.key(1))
W = mx.random.normal((128,), key=mx.random.key(2)) * 0.1


def rank_one(w: mx.array) -> mx.array:
    return w + mx.outer(U, W)


def run(model, tokens=TOKENS, compile=False):
    with model.trace(tokens, compile=compile, capture="saved"):
        out = model.output.save()
    return out


def reference_with(seed: int, **weights) -> nn.Module:
    """A separate copy of the test model (same seed) with ``weights`` set on it by hand."""
    module = tiny_llama_module(seed=seed)
    for path, fn in weights.items():
        owner, _, key = path.rpartition(".")
        target = module.model
        for part in owner.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        setattr(target, key, fn(getattr(target, key)))
    mx.eval(module.parameters())
    return module


@pytest.mark.parametrize("compile", [False, True])
def test_a_rank_one_update_runs_in_the_edited_model_only(model, compile):
    raw = model.model(TOKENS)
    edited = model.edit_weights({NAME: rank_one})
    want = llama_forward(reference_with(0, **{"layers.2.mlp.down_proj.weight": rank_one}), TOKENS)
    np.testing.assert_allclose(np.array(run(edited, compile=compile)), np.array(want), rtol=1e-4, atol=1e-4)
    assert mx.array_equal(run(model, compile=compile), raw)  # the base model runs its own weight
    assert repr(edited.edits[0]).startswith(f"WeightEdit({NAME!r} updated by rank_one, (64, 128) float32")


def test_a_replaced_matrix_and_a_bias_free_model(model):
    new = mx.random.normal((64, 64), key=mx.random.key(5)) * 0.05
    edited = model.edit_weights({"layers.0.attn.o_proj.weight": new})
    want = llama_forward(reference_with(0, **{"layers.0.self_attn.o_proj.weight": lambda _: new}), TOKENS)
    np.testing.assert_allclose(np.array(run(edited)), np.array(want), rtol=1e-4, atol=1e-4)
    assert edited.edits[0].how == "replaced"


def test_every_other_weight_and_module_is_shared_not_copied(model):
    edited = model.edit_weights({NAME: rank_one})
    base_params, new_params = dict(tree_flatten(model.model.parameters())), dict(tree_flatten(edited.model.parameters()))
    assert base_params.keys() == new_params.keys()
    changed = [k for k in base_params if new_params[k] is not base_params[k]]
    assert changed == ["model.layers.2.mlp.down_proj.weight"]
    base_modules, new_modules = dict(model.model.named_modules()), dict(edited.model.named_modules())
    copied = sorted(k for k in base_modules if new_modules[k] is not base_modules[k])
    assert copied == ["", "model", "model.layers.2", "model.layers.2.mlp", "model.layers.2.mlp.down_proj"]
    assert model_lock(edited.model) is model_lock(model.model)  # their forwards hook shared modules


def test_the_base_keeps_its_tree_weights_and_cached_programs(model):
    weight = mx.array(model.model.model.layers[2].mlp.down_proj.weight)
    modules = dict(model.model.named_modules())
    with model.trace(TOKENS, compile=True, capture="saved"):
        model.layers[1].output.save()
    before = model.compile_stats()
    edited = model.edit_weights({NAME: rank_one})
    run(edited, compile=True)
    with model.trace(TOKENS, compile=True, capture="saved"):
        model.layers[1].output.save()
    after = model.compile_stats()
    assert after["tree_changes"] == before["tree_changes"] == 0
    assert after["misses"] == before["misses"] and after["hits"] == before["hits"] + 1  # its lowering was kept
    assert after["traces"] == before["traces"]
    now = dict(model.model.named_modules())
    assert now.keys() == modules.keys() and all(now[k] is m for k, m in modules.items())
    assert mx.array_equal(model.model.model.layers[2].mlp.down_proj.weight, weight)
    assert edited.compile_stats()["traces"] >= 1  # a tree of its own: programs of its own


def test_a_quantized_layer_is_dequantized_in_the_edited_model_only():
    module = tiny_llama_module(seed=4, quantize=True)
    model = InterpretableModel(module, tokenizer=CharTokenizer())
    edited = model.edit_weights({NAME: rank_one})
    (record,) = edited.edits
    assert record.dequantized == "4-bit, group size 32" and "dequantized from 4-bit" in repr(record)
    assert isinstance(module.model.layers[2].mlp.down_proj, nn.QuantizedLinear)  # the base stays quantized
    assert type(edited.model.model.layers[2].mlp.down_proj) is nn.Linear
    assert edited.model.model.layers[1].mlp.down_proj is module.model.layers[1].mlp.down_proj
    reference = dequantized(module)
    reference.model.layers[2].mlp.down_proj.weight = rank_one(reference.model.layers[2].mlp.down_proj.weight)
    np.testing.assert_allclose(np.array(run(edited)), np.array(llama_forward(reference, TOKENS)), rtol=1e-4, atol=1e-4)
    with pytest.raises(EditError, match="is quantized .*edit its 'weight' instead"):
        model.edit_weights({"layers.2.mlp.down_proj.scales": mx.zeros((64, 4))})


def test_inplace_weight_edits_are_reverted_by_clear_edits(model):
    tree, raw = model.model, model.model(TOKENS)
    shared = model.edit({"layers.1": iv.scale(1.0)})  # made before: keeps the weights it was made on
    with model.trace(TOKENS, capture="saved") as tr:
        model.output.save("out")
    prog = tr.program()
    model.edit({"layers.1": iv.scale(1.0)}, inplace=True)  # traces of the same structure as shared's
    assert model.edit_weights({NAME: rank_one}, inplace=True) is model
    want = llama_forward(reference_with(0, **{"layers.2.mlp.down_proj.weight": rank_one}), TOKENS)
    assert model.model is not tree and tree.model.layers[2].mlp.down_proj.weight is not None
    np.testing.assert_allclose(np.array(run(model, compile=True)), np.array(want), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(prog()["out"]), np.array(want), rtol=1e-4, atol=1e-4)  # sees the edit
    assert mx.array_equal(run(shared, compile=True), raw)
    assert [type(e).__name__ for e in model.edits] == ["InterventionEdit", "WeightEdit"]
    model.clear_edits()
    assert model.model is tree and model.edits == ()
    assert mx.array_equal(run(model, compile=True), raw) and mx.array_equal(prog()["out"], raw)
    assert mx.array_equal(tree(TOKENS), raw)


def test_weight_edits_compose_with_activation_edits(model):
    both = model.edit({"layers.1": iv.scale(0.5)}).edit_weights({NAME: rank_one})
    assert [type(e).__name__ for e in both.edits] == ["InterventionEdit", "WeightEdit"]
    reference = reference_with(0, **{"layers.2.mlp.down_proj.weight": rank_one})
    want = llama_forward(reference, TOKENS, lambda s, v: v * 0.5 if s == ("layer", 1) else v)
    np.testing.assert_allclose(np.array(run(both)), np.array(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weights, error, match", [
    ({"layers.2.mlp.down_prj.weight": mx.zeros((64, 128))}, ModuleNameError, "down_proj"),
    ({"layers.9.mlp.down_proj.weight": mx.zeros((64, 128))}, ModuleNameError, "out of range"),
    ({"layers.2.mlp.down_proj.wieght": mx.zeros((64, 128))}, EditError, "has no weight 'wieght'.*did you mean 'weight'"),
    ({"layers.2.mlp.weight": mx.zeros((64, 128))}, EditError, "its weights are: \\(none\\)"),
    ({"layers.2.mlp.down_proj": mx.zeros((64, 128))}, EditError, "has no weight 'down_proj'.*is a module"),
    ({NAME: mx.zeros((128, 64))}, EditError, r"shape \(64, 128\), the new value \(128, 64\)"),
    ({NAME: mx.zeros((64, 128), dtype=mx.float16)}, EditError, "dtype mlx.core.float32, the new value mlx.core.float16"),
    ({NAME: [[0.0] * 128] * 64}, EditError, "expected an mx.array"),
    ({"weight": mx.zeros(3)}, EditError, "not of the form 'module.weight'"),
    ({"layers.2.attn.pattern.weight": mx.zeros(3)}, EditError, "attention internal"),
    ({NAME: rank_one, "model.layers.2.mlp.down_proj.weight": rank_one}, EditError, "name the same weight"),
    ({}, TypeError, "non-empty dict"),
])
def test_bad_weight_edits_are_refused_before_anything_changes(model, weights, error, match):
    tree, raw = model.model, model.model(TOKENS)
    leaves = dict(tree_flatten(tree.parameters()))
    with pytest.raises(error, match=match):
        model.edit_weights(weights)
    assert model.model is tree and model.edits == ()
    assert all(v is leaves[k] for k, v in tree_flatten(tree.parameters()))
    assert mx.array_equal(run(model), raw)


def test_a_failing_update_function_leaves_nothing_modified(model):
    def broken(w):
        raise RuntimeError("bad update")

    with pytest.raises(RuntimeError, match="bad update"):
        model.edit_weights({NAME: rank_one, "layers.1.mlp.up_proj.weight": broken}, inplace=True)
    assert model.edits == () and mx.array_equal(run(model), model.model(TOKENS))


def test_an_edited_models_fingerprint_differs_from_its_bases(model):
    base = model_identity(model)
    assert "edits" not in base
    weights = model_identity(model.edit_weights({NAME: rank_one}))
    assert weights["fingerprint"] != base["fingerprint"]
    first = model_identity(model.edit({"layers.1": iv.scale(0.5)}))
    again = model_identity(model.edit({"layers.1": iv.scale(0.5)}))  # another line: the same edit
    other = model_identity(model.edit({"layers.1": iv.scale(0.25)}))
    assert first["fingerprint"] == again["fingerprint"] != base["fingerprint"]
    assert other["fingerprint"] != first["fingerprint"] and len(first["edits"]) == 1


def test_two_edits_of_one_quantized_layer_edit_one_float_layer():
    from tests.models import tiny_gpt2_module

    def quantized_gpt2():
        module = tiny_gpt2_module(seed=1)
        nn.quantize(module, group_size=32, bits=4)
        mx.eval(module.parameters())
        return module

    model = InterpretableModel(quantized_gpt2(), layer_attr="h")
    edited = model.edit_weights({"h.0.mlp.c_fc.weight": lambda w: w * 0.5, "h.0.mlp.c_fc.bias": lambda b: b + 1.0})
    reference = quantized_gpt2()  # the same layer dequantized and edited by hand
    q = reference.model.h[0].mlp.c_fc
    layer = nn.Linear(q.weight.shape[1] * 32 // q.bits, q.weight.shape[0])
    layer.weight = mx.dequantize(q.weight, q.scales, q.biases, group_size=q.group_size, bits=q.bits) * 0.5
    layer.bias = q.bias + 1.0
    reference.model.h[0].mlp.c_fc = layer
    tokens = mx.array([[1, 5, 9, 13, 17]])
    np.testing.assert_allclose(np.array(run(edited, tokens)), np.array(reference(tokens)), rtol=1e-4, atol=1e-4)
    assert [e.name for e in edited.edits] == ["h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias"]
