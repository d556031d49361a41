"""Test models: tiny in-memory mlx-lm models, a toy tokenizer, a hand-written reference forward."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gpt2, llama, qwen2
from mlx_lm.models.base import create_attention_mask


REPO = Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "models" / "stories260K"


def tiny_llama_module(seed: int = 0, layers: int = 4, hidden: int = 64, vocab: int = 128, tied: bool = False,
                      quantize: bool = False) -> nn.Module:
    """A small random mlx-lm llama."""
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=layers,
                           intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2,
                           rms_norm_eps=1e-5, vocab_size=vocab, tie_word_embeddings=tied)
    model = llama.Model(args)
    if quantize:
        nn.quantize(model, group_size=32, bits=4)
    mx.eval(model.parameters())
    return model


def tiny_gpt2_module(seed: int = 0, layers: int = 3) -> nn.Module:
    """A small random mlx-lm GPT-2 (use ``layer_attr="h"``)."""
    mx.random.seed(seed)
    args = gpt2.ModelArgs(model_type="gpt2", n_ctx=64, n_embd=64, n_head=4, n_layer=layers, n_positions=64,
                          layer_norm_epsilon=1e-5, vocab_size=128)
    model = gpt2.Model(args)
    mx.eval(model.parameters())
    return model


def tiny_qwen2_module(seed: int = 0) -> nn.Module:
    mx.random.seed(seed)
    args = qwen2.ModelArgs(model_type="qwen2", hidden_size=64, num_hidden_layers=3, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=128,
                           tie_word_embeddings=True)
    model = qwen2.Model(args)
    mx.eval(model.parameters())
    return model


class CharTokenizer:
    """A tiny tokenizer for tests: BOS (1) then one id per character (ord % 100 + 2)."""

    vocab_size = 128
    pad_token_id = 0
    eos_token_id = 0
    bos_token_id = 1

    def encode(self, text: str) -> list[int]:
        return [1] + [ord(c) % 100 + 2 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i - 2 + 32) if i >= 2 else "" for i in ids)

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.decode([i])


def reference_llama_forward(model: nn.Module, tokens: mx.array,
                            at_layer: dict[int, Callable[[mx.array], mx.array]] | None = None) -> mx.array:
    """A hand-written llama forward that applies ``at_layer[i]`` to layer i's output."""
    inner = model.model
    h = inner.embed_tokens(tokens)
    mask = create_attention_mask(h, None)
    for i, layer in enumerate(inner.layers):
        h = layer(h, mask, cache=None)
        if at_layer and i in at_layer:
            h = at_layer[i](h)
    h = inner.norm(h)
    return inner.embed_tokens.as_linear(h) if model.args.tie_word_embeddings else model.lm_head(h)


class LoRALinear(nn.Module):
    """A LoRA-style wrapper of a linear layer (float or quantized): ``base(x) + scale * (x @ a) @ b``."""

    def __init__(self, base: nn.Module, rank: int = 4, scale: float = 0.5, seed: int = 0):
        super().__init__()
        out_dims, in_dims = self.dims(base)
        key_a, key_b = mx.random.split(mx.random.key(seed))
        self.base = base
        self.a = 0.3 * mx.random.normal((in_dims, rank), key=key_a)
        self.b = 0.3 * mx.random.normal((rank, out_dims), key=key_b)
        self.scale = scale

    def __call__(self, x: mx.array) -> mx.array:
        return self.base(x) + self.scale * (x @ self.a) @ self.b

    @staticmethod
    def dims(linear: nn.Module) -> tuple[int, int]:
        """``(out, in)`` of a linear layer, quantized or wrapped."""
        if isinstance(linear, LoRALinear):
            return linear.b.shape[1], linear.a.shape[0]
        packed = 32 // linear.bits if isinstance(linear, nn.QuantizedLinear) else 1
        return linear.weight.shape[0], linear.weight.shape[1] * packed

    def delta(self) -> mx.array:
        """What the wrapper adds to the base's weight, ``(out, in)``."""
        return self.scale * (self.a @ self.b).T
