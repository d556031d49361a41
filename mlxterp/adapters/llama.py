"""The llama shape: ``h = x + self_attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))``
under ``model.layers``, ``model.norm`` and an ``lm_head`` (or the tied ``model.embed_tokens``).

Most of mlx-lm's decoder families have it; some rename the MLP (Mixtral's ``block_sparse_moe``, Llama 4's
``feed_forward``) or every part (InternLM2), and some scale the residual additions (Granite, MiniCPM),
which does not change where anything is. Their logit transforms differ (Granite divides, MiniCPM scales
the head's input).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .base import Architecture, Residual, arg, rotary

LLAMA = Architecture(
    family="llama", embed="model.embed_tokens", layers="model.layers", final_norm="model.norm", head="lm_head",
    attn="self_attn", mlp="mlp", ln1="input_layernorm", ln2="post_attention_layernorm",
    positions=rotary("max_position_embeddings"),
)


def _granite_logits(raw: nn.Module, head: Callable[[mx.array], mx.array], hidden: mx.array) -> mx.array:
    return head(hidden) / raw.logits_scaling


def _minicpm_logits(raw: nn.Module, head: Callable[[mx.array], mx.array], hidden: mx.array) -> mx.array:
    if arg(raw, "tie_word_embeddings"):  # mlx-lm scales the head's input only for an untied head
        return head(hidden)
    return head(hidden / (raw.args.hidden_size / raw.args.dim_model_base))


def family(name: str, **changes: object) -> Architecture:
    """The llama layout named ``name``, with ``changes``."""
    return dataclasses.replace(LLAMA, family=name, **changes)


ARCHITECTURES = {
    name: family(name)
    for name in ("llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "olmoe", "phi3", "starcoder2",
                 "smollm3", "helium", "ernie4_5", "hunyuan_v1_dense")
}
# These call their lm_head whatever tie_word_embeddings says.
ARCHITECTURES.update({name: family(name, tie_flag=None) for name in ("qwen2_moe", "deepseek_v2")})
ARCHITECTURES.update(
    gemma=family("gemma", head=None),
    mixtral=family("mixtral", mlp="block_sparse_moe"),
    llama4_text=family("llama4_text", mlp="feed_forward", head="output"),
    internlm2=family("internlm2", embed="model.tok_embeddings", head="output", attn="attention",
                     mlp="feed_forward", ln1="attention_norm", ln2="ffn_norm"),
    granite=family("granite", logits=_granite_logits, residual=Residual(scaled=True)),
    minicpm=family("minicpm", logits=_minicpm_logits, residual=Residual(scaled=True)),
)
