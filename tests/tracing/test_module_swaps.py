"""Modules replaced after wrapping (``nn.quantize``, a LoRA wrapper, ``layer.mlp = other``, a layer list
edited): traces, programs, analysis helpers and generation follow the current module tree, checked against
the hand-written forward (tests/reference.py) on the swapped model."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models import llama

import mlxterp as mt
from mlxterp import InterpretableModel
from mlxterp import interventions as iv
from mlxterp.compiler import ModuleNotCalledError
from tests.models import CharTokenizer, LoRALinear, tiny_llama_module
from tests.reference import dequantized, llama_forward

TOKENS = mx.array([[1, 5, 9, 13, 17, 21]])


@pytest.fixture()
def raw():
    """A fresh module per test: these tests edit it."""
    return tiny_llama_module(seed=3, layers=3, hidden=64)


@pytest.fixture()
def model(raw):
    return InterpretableModel(raw, tokenizer=CharTokenizer())


def close(a, b, tol=1e-4):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def zero_mlp_at(layer):
    return lambda site, x: mx.zeros_like(x) if site == ("mlp", layer) else x


def zeroed_down_proj(model, compile):
    """A trace writing zeros over layer 1's ``down_proj`` output (the MLP's output) and reading q_proj."""
    with model.trace(TOKENS, compile=compile, capture="saved") as tr:
        model.layers[1].mlp.down_proj.output = mx.zeros((1, 6, 64))
        model.layers[1].attn.q_proj.output.save("q")
        model.output.save("logits")
    return tr


@pytest.mark.parametrize("compile", [False, True])
def test_a_seen_trace_after_nn_quantize_hooks_the_new_modules(model, raw, compile):
    """Before: the cached lowering hooked the float Linears: the write was ignored, the save a bare KeyError."""
    zeroed_down_proj(model, compile)
    zeroed_down_proj(model, compile)  # the structure is cached (and compiled)
    nn.quantize(raw.model, group_size=32, bits=4)
    tr = zeroed_down_proj(model, compile)
    expected = llama_forward(dequantized(raw), TOKENS, zero_mlp_at(1))
    close(tr.saved_values["logits"], expected)
    assert "q" in tr.saved_values and model.compile_stats()["tree_changes"] == 1


@pytest.mark.parametrize("compile", [False, True])
def test_a_replaced_mlp_is_the_one_traced(model, raw, compile):
    """Before: eagerly, the write went to the old MLP object (lost). (The compiled trace was right by chance:
    mx.compile replays its graph on the model's arrays, and the new MLP's sit where the old one's did.)"""
    half = lambda site, x: x * 0.5 if site == ("mlp", 1) else x  # noqa: E731

    def run():
        with model.trace(TOKENS, compile=compile, capture="saved") as tr:
            model.layers[1].mlp.output = model.layers[1].mlp.output * 0.5
            model.output.save("logits")
        return tr.saved_values["logits"]

    close(run(), llama_forward(raw, TOKENS, half))
    raw.model.layers[1].mlp = llama.MLP(raw.args)
    mx.eval(raw.parameters())
    close(run(), llama_forward(raw, TOKENS, half))


def steering_program(model):
    with model.trace(TOKENS, capture="saved") as tr:
        alpha = mt.param("alpha", 0.0)
        down = model.layers[1].mlp.down_proj
        down.output = down.output * alpha
        model.output[:, -1].save("last")
    return tr.program()


def reference_last(raw, alpha):
    scaled = lambda site, x: x * alpha if site == ("mlp", 1) else x  # noqa: E731
    return llama_forward(raw, TOKENS, scaled)[:, -1]


@pytest.mark.parametrize("swap", ["quantize", "lora", "new mlp"])
def test_a_program_follows_the_current_module_tree(model, raw, swap):
    """Before: the program kept hooking the old objects (its writes lost, its saves a KeyError)."""
    prog = steering_program(model)
    prog(alpha=0.5)
    mlp = raw.model.layers[1].mlp
    if swap == "quantize":
        nn.quantize(raw.model, group_size=32, bits=4)
        reference = dequantized(raw)
    elif swap == "lora":
        mlp.down_proj = LoRALinear(mlp.down_proj)
        reference = tiny_llama_module(seed=3, layers=3, hidden=64)
        reference.update(raw.parameters(), strict=False)
        reference.model.layers[1].mlp.down_proj.weight = mlp.down_proj.base.weight + mlp.down_proj.delta()
    else:
        raw.model.layers[1].mlp = llama.MLP(raw.args)
        mx.eval(raw.parameters())
        reference = raw
    close(prog(alpha=0.5)["last"], reference_last(reference, 0.5))
    close(prog.fn(params={"alpha": 0.25})["last"], reference_last(reference, 0.25))
    folded = prog.batched(alpha=mx.array([0.0, 2.0]))["last"]
    close(folded[1], reference_last(reference, 2.0))
    close(folded[0], reference_last(reference, 0.0))


def test_a_program_whose_module_is_gone_says_so(model, raw):
    prog = steering_program(model)
    raw.model.layers[1].mlp = nn.Linear(64, 64, bias=False)  # no down_proj any more
    with pytest.raises(ModuleNotCalledError, match="was replaced since this program was recorded.*down_proj"):
        prog(alpha=0.5)


def test_new_submodules_are_named_and_old_ones_gone(model, raw):
    """Before: the module index still held the old tree: ``q_proj.base`` was unknown."""
    attn = raw.model.layers[0].self_attn
    attn.q_proj = LoRALinear(attn.q_proj)
    with model.trace(TOKENS, capture="saved") as tr:
        model.layers[0].attn.q_proj.base.output.save("base")
        model.layers[0].attn.q_proj.output.save("wrapped")
    x = raw.model.layers[0].input_layernorm(raw.model.embed_tokens(TOKENS))
    close(tr.saved_values["base"], x @ attn.q_proj.base.weight.T)
    close(tr.saved_values["wrapped"], x @ (attn.q_proj.base.weight + attn.q_proj.delta()).T)
    assert model.layers[0].attn.q_proj.module is attn.q_proj
    assert dict(model.named_modules())["model.layers.0.self_attn.q_proj.base"] is attn.q_proj.base


def test_proxies_and_named_modules_give_the_current_module(model, raw):
    proxy = model.layers[2].mlp
    assert proxy.module is raw.model.layers[2].mlp
    raw.model.layers[2].mlp = llama.MLP(raw.args)
    assert proxy.module is raw.model.layers[2].mlp
    assert model.module("layers.2.mlp").module is raw.model.layers[2].mlp
    assert dict(model.named_modules())["model.layers.2.mlp"] is raw.model.layers[2].mlp


def test_a_layer_removed_from_the_list_is_gone_from_every_name(model, raw):
    assert len(model.layers) == 3
    with model.trace(TOKENS):
        model.layers[-1].output.save("last")
    raw.model.layers.pop()
    with model.trace(TOKENS, capture="saved") as tr:
        model.layers[-1].output.save("last")
        model.output.save("logits")
    assert len(model.layers) == 2
    close(tr.saved_values["last"], _layer_output(raw, 1))
    close(tr.saved_values["logits"], llama_forward(raw, TOKENS))
    with pytest.raises(IndexError, match="the model has 2 layers"):
        model.layers[2]


def _layer_output(raw, layer):
    found = {}

    def keep(site, x):
        if site == ("layer", layer):
            found["h"] = x
        return x

    llama_forward(raw, TOKENS, keep)
    return found["h"]


def test_analysis_helpers_drop_their_cached_programs(model, raw):
    """Before: activation_patching replayed its cached sweep program on the old modules."""
    model.activation_patching("abcd", "abxd", component="mlp")
    raw.model.layers[1].mlp = llama.MLP(raw.args)
    mx.eval(raw.parameters())
    got = model.activation_patching("abcd", "abxd", component="mlp")
    fresh = InterpretableModel(raw, tokenizer=CharTokenizer()).activation_patching("abcd", "abxd", component="mlp")
    assert got == pytest.approx(fresh, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_generation_runs_on_the_current_modules(model, raw, compile):
    """Before: the decode-step programs cached on the model hooked the float Linears (the write was lost)."""
    kill = {"layers.1.mlp.down_proj": iv.scale(0.0)}
    model.generate("abc", max_new_tokens=4, interventions=kill, compile=compile).tokens
    nn.quantize(raw.model, group_size=32, bits=4)
    got = model.generate("abc", max_new_tokens=4, interventions=kill, compile=compile)
    fresh = InterpretableModel(raw, tokenizer=CharTokenizer()).generate("abc", max_new_tokens=4, interventions=kill,
                                                                        compile=compile)
    assert got.tokens == fresh.tokens


def test_nothing_but_a_swap_counts_as_a_tree_change(model, raw):
    for k in range(3):
        with model.trace(TOKENS, interventions={"layers.1": iv.scale(float(k))}, compile=True, capture="saved"):
            model.output.save()
        raw.update({"model": {"norm": {"weight": mx.ones(64) * (k + 1)}}})  # new weights: not a swap
        raw.eval()
    prog = steering_program(model)
    prog(alpha=0.3)
    prog(alpha=0.4)
    stats = model.compile_stats()
    assert stats["tree_changes"] == 0 and stats["misses"] == 2


def test_the_probe_a_helper_reads_before_any_trace_is_of_the_current_tree(model, raw):
    """Helpers (the activation store's setup) read shapes off the probe before they trace anything."""
    model._probe(TOKENS)
    attn = raw.model.layers[0].self_attn
    attn.q_proj = LoRALinear(attn.q_proj)
    assert ("model.layers.0.self_attn.q_proj.base", 0, "output") in model._probe(TOKENS).values
