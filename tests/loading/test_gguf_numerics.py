"""GGUF numerics against an independent float32 reference (tests/loading/gguf_reference.py).

The reference reads the file's bytes with numpy and dequantizes the GGML blocks by hand, so a bug shared
by ``mx.load`` and mlxterp's loader cannot hide. Targets (issue 9): logits within 2e-4 relative L2 of the
float32 dequantized forward, activation-patching recoveries within 0.01 points; dequantizing to float32 is
exact. The old loader (float16 scales, a float16-rounded Q8_0 embedding) fails the embedding, logits and
dequantization tests here.

Fast tier: a tiny llama written as llama.cpp would (tests/loading/test_gguf.py). Real tier: SmolLM2-135M.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.loading import load_gguf
from tests.loading.gguf_reference import GGUFReference, reference_model, reference_weights, relative_l2
from tests.loading.test_gguf import QUANT, SKIP_REASON, SMOLLM2, TOKENS, tiny_args, write_tiny_gguf

LOGITS_RTOL = 2e-4  # relative L2 of the logits against the float32 reference
RECOVERY_ATOL = 0.01  # percentage points
CLEAN = [5, 17, 100, 200, 3, 9, 42, 250]
CORRUPTED = [5, 17, 100, 60, 3, 9, 42, 250]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A tiny GGUF with a Q8_0 embedding and output, Q4_1 attention and Q4_0 MLP; its writer's float32 model."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    source = write_tiny_gguf(path, tiny_args(), quant=QUANT, seed=7)
    return path, source


def logits(model: nn.Module, tokens: mx.array) -> np.ndarray:
    return np.array(model(tokens).astype(mx.float32))


# ---------------------------------------------------------------------------------------------------
# fast tier
# ---------------------------------------------------------------------------------------------------
def test_reference_reads_what_the_writer_wrote(tiny):
    """The numpy reader (and its undoing of the q/k permutation) gives exactly the writer's float32 weights."""
    path, source = tiny
    ref = reference_weights(GGUFReference(path))
    params = dict(nn.utils.tree_flatten(source.parameters()))
    assert set(ref) == set(params)
    for name, value in params.items():
        assert np.array_equal(ref[name], np.array(value)), name


def test_quantized_embedding_rows_are_exact(tiny):
    """The Q8_0 embedding computes in float32 (float16 scales would round every row)."""
    path, _ = tiny
    model, _ = load_gguf(path)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    want = GGUFReference(path).float32("token_embd.weight")[np.array(TOKENS[0])]
    got = np.array(model.model.embed_tokens(TOKENS)[0].astype(mx.float32))
    np.testing.assert_array_equal(got, want)
    assert model.model.embed_tokens.scales.dtype == mx.float32


def test_quantized_logits_match_float32_reference(tiny):
    path, _ = tiny
    model, _ = load_gguf(path)
    error = relative_l2(logits(model, TOKENS), logits(reference_model(path), TOKENS))
    assert error < LOGITS_RTOL / 10, f"relative L2 {error:.2e}"


def test_dequantize_is_exact(tiny):
    """Every dequantized weight equals the reference's bit for bit (the loader keeps the GGUF q/k layout)."""
    path, _ = tiny
    model, _ = load_gguf(path, dequantize=True)
    assert not [m for _, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    ref = GGUFReference(path)
    loaded = dict(nn.utils.tree_flatten(model.parameters()))
    checked = 0
    for name in ref.tensors:
        parts = name.split(".")
        layer = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "ffn_down": "mlp.down_proj"}
        if name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif parts[0] == "blk" and parts[2] in layer:
            key = f"model.layers.{parts[1]}.{layer[parts[2]]}.weight"
        else:
            continue
        assert loaded[key].dtype == mx.float32
        np.testing.assert_array_equal(np.array(loaded[key]), ref.float32(name), err_msg=name)
        checked += 1
    assert checked == 7  # the embedding (Q8_0), q and k (Q4_1), down (Q4_0) of both layers


@pytest.mark.parametrize("form", [{"quantized": True}, {"dtype": "float32"}])
def test_patching_recoveries_match_float32_reference(tiny, form):
    path, _ = tiny
    model = InterpretableModel(str(path), **form)
    reference = InterpretableModel(reference_model(path))
    got = model.activation_patching(CLEAN, CORRUPTED, component="mlp")
    want = reference.activation_patching(CLEAN, CORRUPTED, component="mlp")
    assert max(abs(got[k] - want[k]) for k in want) < RECOVERY_ATOL
    assert max(abs(v) for v in want.values()) > 1.0  # the comparison is not between two near-zero tables


# ---------------------------------------------------------------------------------------------------
# real tier: SmolLM2-135M Q4_1 (8-bit embedding, 4-bit linears)
# ---------------------------------------------------------------------------------------------------
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smol_reference() -> InterpretableModel:
    return InterpretableModel(reference_model(SMOLLM2))


@pytest.fixture(scope="module")
def smol_quantized() -> InterpretableModel:
    return InterpretableModel("smollm2-135m", quantized=True)


@pytest.mark.realmodel
@pytest.mark.skipif(SMOLLM2 is None, reason=SKIP_REASON)
class TestSmolLM2Numerics:
    def test_embedding_rows_are_exact(self, smol_quantized):
        ids = smol_quantized.encode(PROMPT)
        want = GGUFReference(SMOLLM2).float32("token_embd.weight")[ids]
        np.testing.assert_array_equal(np.array(smol_quantized.model.model.embed_tokens(mx.array([ids]))[0]), want)

    @pytest.mark.parametrize("form", ["quantized", "float32"])
    def test_logits_match_float32_reference(self, smol_reference, smol_quantized, form):
        model = smol_quantized if form == "quantized" else InterpretableModel("smollm2-135m", dtype="float32")
        tokens = mx.array([smol_quantized.encode(PROMPT)])
        error = relative_l2(logits(model.model, tokens), logits(smol_reference.model, tokens))
        assert error < LOGITS_RTOL, f"{form}: relative L2 {error:.2e}"

    def test_patching_recoveries_match_float32_reference(self, smol_reference, smol_quantized):
        clean, corrupted = "The capital of France is", "The capital of Italy is"
        layers = list(range(0, 30, 5))  # a sixth of the layers keeps the two sweeps short
        got = smol_quantized.activation_patching(clean, corrupted, component="mlp", layers=layers)
        want = smol_reference.activation_patching(smol_quantized.encode(clean), smol_quantized.encode(corrupted),
                                                  component="mlp", layers=layers)
        worst = max(abs(got[k] - want[k]) for k in want)
        assert worst < RECOVERY_ATOL, f"max |recovery difference| {worst:.4f} points"
