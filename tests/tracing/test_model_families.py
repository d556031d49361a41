"""The tracer on other mlx-lm families: gpt2 (layer_attr="h"), qwen2 (tied), quantized llama."""

import mlx.core as mx
import pytest

from mlxterp import InterpretableModel
from mlxterp import interventions as iv
from tests.models import CharTokenizer, tiny_gpt2_module, tiny_llama_module, tiny_qwen2_module

FAMILIES = {
    "gpt2": (tiny_gpt2_module, "h", "attn"),
    "qwen2": (tiny_qwen2_module, "layers", "self_attn"),
    "llama_q4": (lambda: tiny_llama_module(quantize=True), "layers", "self_attn"),
    "llama_tied": (lambda: tiny_llama_module(tied=True), "layers", "self_attn"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    make, layer_attr, attn = FAMILIES[request.param]
    return InterpretableModel(make(), tokenizer=CharTokenizer(), layer_attr=layer_attr), attn


@pytest.mark.parametrize("compile", [False, True])
def test_plain_trace_equals_raw_forward(family, compile):
    model, _ = family
    tokens = mx.array([[1, 4, 8, 15, 16, 23, 42]])
    with model.trace(tokens, compile=compile) as tr:
        pass
    assert mx.allclose(tr.output, model.model(tokens), atol=1e-5)
    assert len(tr.activations) > 10


@pytest.mark.parametrize("compile", [False, True])
def test_intervention_on_a_layer_and_on_attention(family, compile):
    model, attn = family
    tokens = mx.array([[1, 4, 8, 15, 16, 23, 42]])
    with model.trace(tokens, compile=compile, capture="saved"):
        model.layers[1].output = model.layers[1].output * 0
        zeroed = model.output.save()
    with model.trace(tokens, compile=compile, capture="saved"):
        model.layers[2].input = model.layers[2].input * 0
        via_input = model.output.save()
    assert mx.allclose(zeroed, via_input, atol=1e-5)
    with model.trace(tokens, interventions={f"layers.0.{attn}": iv.scale(0.0)}, compile=compile) as tr:
        pass
    assert float(mx.abs(tr.get_activation("layers.0.attn")).max()) == 0.0


def test_quantized_linear_outputs_can_be_patched():
    model = InterpretableModel(tiny_llama_module(quantize=True), tokenizer=CharTokenizer())
    tokens = mx.array([[1, 4, 8, 15]])
    with model.trace(tokens, capture="saved"):
        model.layers[0].mlp.down_proj.output[:, -1] = 0.0
        patched = model.layers[0].mlp.down_proj.output.save()
        logits = model.output.save()
    assert float(mx.abs(patched[:, -1]).max()) == 0.0
    assert not mx.allclose(logits, model.model(tokens))


def test_padding_exactness_on_gpt2():
    model = InterpretableModel(tiny_gpt2_module(), tokenizer=CharTokenizer(), layer_attr="h")
    with model.trace(["hi", "a longer prompt"], capture="saved") as tr:
        batched = model.output.save()
    with model.trace("hi", capture="saved"):
        single = model.output.save()
    assert mx.allclose(batched[0, : tr.lengths[0]], single[0], atol=1e-5)
