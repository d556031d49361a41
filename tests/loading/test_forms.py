"""Tests for mlxterp.loading.forms: dtype= / quantized=, the automatic choice, exact dequantization."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxterp import InterpretableModel
from mlxterp.loading import forms
from tests.loading.test_gguf import QUANT, tiny_args, write_tiny_gguf
from tests.models import tiny_llama_module

TOKENS = mx.array([[1, 5, 9, 13, 17, 21]])


def quantized_llama() -> nn.Module:
    return tiny_llama_module(seed=3, quantize=True)


def kinds(model: nn.Module) -> set:
    return {type(m).__name__ for _, m in model.named_modules() if type(m).__name__.endswith(("Linear", "Embedding"))}


@pytest.fixture()
def machine(monkeypatch):
    """Set what the automatic choice sees: device, memory, measured float32 speedup."""
    def set_machine(gpu=False, memory=16 << 30, speedup=10.0):
        monkeypatch.setattr(forms, "on_gpu", lambda: gpu)
        monkeypatch.setattr(forms, "memory_bytes", lambda: memory)
        monkeypatch.setattr(forms, "cpu_float32_speedup", lambda: speedup)
    return set_machine


# ---------------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, quantized, match", [
    ("int8", None, r"dtype='int8' is not valid; valid dtypes: 'float32', 'float16', 'bfloat16'"),
    (mx.int32, None, r"dtype=mlx.core.int32 is not valid; valid dtypes"),
    (None, "yes", r"quantized='yes' is not valid; valid choices: dtype='float32'"),
    ("float32", True, r"dtype='float32' dequantizes the weights but quantized=True keeps them quantized; "
                      r"pass one of them. Valid choices: .*quantized=False"),
])
def test_invalid_requests_name_the_choices(dtype, quantized, match):
    with pytest.raises(ValueError, match=match):
        forms.check_request(dtype, quantized)


@pytest.mark.parametrize("dtype, name", [(None, None), ("float16", "float16"), (mx.bfloat16, "bfloat16")])
def test_dtype_names(dtype, name):
    assert forms.dtype_name(dtype) == name


def test_quantized_true_needs_quantized_layers():
    with pytest.raises(ValueError, match=r"quantized=True .* has no quantized layers. Valid choices"):
        forms.apply_form(tiny_llama_module(), quantized=True)


# ---------------------------------------------------------------------------------------------------
# the automatic choice
# ---------------------------------------------------------------------------------------------------
def never() -> float:
    raise AssertionError("the speed probe must not run here")


@pytest.mark.parametrize("gpu, memory, speedup, expand, reason", [
    (True, 1 << 40, never, False, "on the GPU"),
    (False, None, never, False, "memory is unknown"),
    (False, 4 * 10**9 - 1, never, False, "would take over 1/4 of the memory"),
    (False, 4 * 10**9 + 4, lambda: 9.5, True, "float32 matmuls are 9.5x faster"),
    (False, 4 * 10**9 + 4, lambda: 0.7, False, "only 0.70x as fast"),
    (False, 4 * 10**9 + 4, lambda: 1.5, False, "only 1.50x as fast"),  # not worth 4-8x the memory
])
def test_choose(gpu, memory, speedup, expand, reason):
    got, why = forms.choose(10**9, gpu, memory, speedup)
    assert got is expand and why.startswith("auto") and reason in why


def test_auto_dequantizes_on_a_fast_cpu(machine):
    machine(speedup=10.0)
    model = quantized_llama()
    form = forms.apply_form(model)
    assert kinds(model) == {"Linear", "Embedding"} and form.dequantized and form.choice == "auto"
    assert form.summary == "float32, dequantized at load"


@pytest.mark.parametrize("setting", [{"gpu": True}, {"speedup": 0.6}, {"memory": 1 << 20}])
def test_auto_keeps_quantized(machine, setting):
    machine(**setting)
    model = quantized_llama()
    form = forms.apply_form(model)
    assert "QuantizedLinear" in kinds(model) and not form.dequantized
    assert form.summary == "quantized 4-bit, float32 scales"


def test_float_model_is_used_as_stored(machine):
    machine(speedup=10.0)
    model = tiny_llama_module()
    assert forms.apply_form(model).reason == "as stored: no quantized layers"


def test_speed_probe_measures_something():
    assert forms.cpu_float32_speedup() > 0


# ---------------------------------------------------------------------------------------------------
# dequantization
# ---------------------------------------------------------------------------------------------------
def test_dequantize_is_exact_and_counts_bytes():
    model = quantized_llama()
    q = model.layers[0].mlp.up_proj
    want = np.array(q["weight"]).view(np.uint8)  # 4-bit: value 2k in the low nibble of byte k
    values = np.stack([want & 15, want >> 4], -1).reshape(q["weight"].shape[0], -1).astype(np.float32)
    scales, biases = np.array(q["scales"], dtype=np.float32), np.array(q["biases"], dtype=np.float32)
    expected = (values.reshape(values.shape[0], -1, 32) * scales[..., None] + biases[..., None]).reshape(values.shape)
    before = forms.float32_bytes(model)
    forms.dequantize(model, mx.float32)
    np.testing.assert_array_equal(np.array(model.layers[0].mlp.up_proj.weight), expected)
    assert before == sum(4 * v.size for _, v in tree_flatten(model.parameters()))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_casts_every_float_weight(dtype):
    model = quantized_llama()
    form = forms.apply_form(model, dtype=dtype)
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {forms.FLOAT_DTYPES[dtype]}
    assert form.summary == f"{dtype}, dequantized at load" and form.reason == f"requested dtype={dtype!r}"


def test_quantized_false_matches_the_quantized_forward():
    model = quantized_llama()
    want = np.array(model(TOKENS))
    forms.apply_form(model, quantized=False)
    np.testing.assert_allclose(np.array(model(TOKENS)), want, atol=1e-4, rtol=1e-4)


def test_unknown_quantized_layer_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.scales, self.biases = mx.quantize(mx.ones((8, 32)), group_size=32, bits=4)
            self.bits, self.group_size = 4, 32

    model = nn.Sequential(Odd())
    with pytest.raises(ValueError, match=r"cannot dequantize 'layers.0' \(Odd\).*quantized=True"):
        forms.dequantize(model)


# ---------------------------------------------------------------------------------------------------
# InterpretableModel
# ---------------------------------------------------------------------------------------------------
def test_interpretable_model_says_its_form(tmp_path, machine):
    machine(speedup=0.6)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_args(), quant=QUANT)
    auto = InterpretableModel(str(path))
    assert "weights='quantized 4/8-bit, float32 scales' (auto)" in repr(auto)
    assert "only 0.60x as fast" in auto.weight_form.reason
    exact = InterpretableModel(str(path), dtype="float32")
    assert "weights='float32, dequantized at load' (requested dtype='float32')" in repr(exact)
    np.testing.assert_allclose(np.array(exact.model(TOKENS)), np.array(auto.model(TOKENS)), atol=1e-5, rtol=1e-5)


def test_interpretable_model_of_a_module_refuses_forms():
    with pytest.raises(ValueError, match=r"a module passed in is used as it is.*apply_form"):
        InterpretableModel(tiny_llama_module(), dtype="float32")
    model = InterpretableModel(tiny_llama_module())
    assert "weights='float32' (as passed)" in repr(model)
