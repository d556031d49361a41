"""Tiny random configs of mlx-lm's model families, built in memory (nothing downloaded), as mlx-lm's own
tests build theirs. ``build(family)`` returns the ``nn.Module``; ``FAMILIES`` lists every family covered."""

from __future__ import annotations

import importlib
from typing import Any, Dict

import mlx.core as mx
import mlx.nn as nn

VOCAB = 96
HIDDEN = 32
LAYERS = 3

# Fields most families share (each family's ModelArgs takes the ones it declares).
_COMMON: Dict[str, Any] = dict(
    hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=64, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=VOCAB, head_dim=8, rope_theta=10000.0,
    max_position_embeddings=128, tie_word_embeddings=False,
)

# family -> (mlx_lm.models module, fields beyond _COMMON). Sliding windows are 4 tokens, shorter than the
# test prompts, so windowed masks are exercised.
CONFIGS: Dict[str, tuple] = {
    "llama": ("llama", {}),
    "mistral": ("llama", {"sliding_window": None}),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {}),
    "qwen2_moe": ("qwen2_moe", dict(num_experts_per_tok=2, num_experts=4, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=32)),
    "qwen3_moe": ("qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
                                    moe_intermediate_size=16, norm_topk_prob=True)),
    "mixtral": ("mixtral", dict(num_experts_per_tok=2, num_local_experts=4)),
    "olmoe": ("olmoe", dict(num_experts=4, num_experts_per_tok=2)),
    "gemma": ("gemma", {}),
    "gemma2": ("gemma2", dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                              query_pre_attn_scalar=8.0)),
    "gemma3_text": ("gemma3_text", dict(sliding_window=4, sliding_window_pattern=2, query_pre_attn_scalar=8.0,
                                        rope_local_base_freq=10000.0)),
    "phi": ("phi", dict(partial_rotary_factor=0.5, layer_norm_eps=1e-5)),
    "phi3": ("phi3", {}),
    "olmo2": ("olmo2", {}),
    "starcoder2": ("starcoder2", dict(norm_epsilon=1e-5)),
    "cohere": ("cohere", dict(layer_norm_eps=1e-5, logit_scale=0.5)),
    "cohere2": ("cohere2", dict(layer_norm_eps=1e-5, logit_scale=0.5, sliding_window=4, sliding_window_pattern=2)),
    "gpt2": ("gpt2", dict(n_ctx=64, n_embd=HIDDEN, n_head=4, n_layer=LAYERS, n_positions=64, layer_norm_epsilon=1e-5)),
    "gpt_neox": ("gpt_neox", dict(layer_norm_eps=1e-5, rotary_emb_base=10000, rotary_pct=0.5,
                                  use_parallel_residual=True)),
    "gptj": ("gptj", dict(n_embd=HIDDEN, n_head=4, n_layer=LAYERS, n_positions=64, rotary_dim=4,
                          layer_norm_epsilon=1e-5)),
    "gpt_bigcode": ("gpt_bigcode", dict(n_embd=HIDDEN, n_layer=LAYERS, n_inner=64, n_head=4, n_positions=64,
                                        layer_norm_epsilon=1e-5, multi_query=True)),
    "internlm2": ("internlm2", {}),
    "granite": ("granite", dict(logits_scaling=2.0, attention_multiplier=0.2, embedding_multiplier=3.0,
                                residual_multiplier=0.5, attention_bias=False, mlp_bias=False)),
    "minicpm": ("minicpm", dict(dim_model_base=16, scale_depth=1.4, scale_emb=2.0)),
    "glm4": ("glm4", dict(attention_bias=True, partial_rotary_factor=0.5)),
    "smollm3": ("smollm3", dict(no_rope_layer_interval=2)),
    "helium": ("helium", dict(attention_bias=False, mlp_bias=False)),
    "ernie4_5": ("ernie4_5", dict(use_bias=False)),
    "hunyuan_v1_dense": ("hunyuan_v1_dense", dict(use_qk_norm=True)),
    "exaone": ("exaone", dict(num_layers=LAYERS, layer_norm_epsilon=1e-5)),
    "stablelm": ("stablelm", dict(use_qkv_bias=True, partial_rotary_factor=0.5, layer_norm_eps=1e-5)),
    "deepseek_v2": ("deepseek_v2", dict(moe_intermediate_size=16, n_shared_experts=1, n_routed_experts=4,
                                        num_experts_per_tok=2, kv_lora_rank=16, q_lora_rank=24,
                                        qk_rope_head_dim=4, v_head_dim=8, qk_nope_head_dim=8, topk_method="greedy",
                                        n_group=1, topk_group=1, first_k_dense_replace=1, moe_layer_freq=1,
                                        num_key_value_heads=4,
                                        rope_scaling={"factor": 2.0, "mscale_all_dim": 1.0,
                                                      "original_max_position_embeddings": 64})),
    "llama4_text": ("llama4_text", dict(intermediate_size_mlp=64, no_rope_layers=[1, 1, 0], use_qk_norm=True,
                                        attention_chunk_size=4, num_experts_per_tok=1, num_local_experts=2,
                                        interleave_moe_layer_step=2, attn_temperature_tuning=True,
                                        floor_scale=8192, attn_scale=0.1)),
    "mamba": ("mamba", dict(state_size=8, conv_kernel=4, use_bias=False, use_conv_bias=True, time_step_rank=4,
                            intermediate_size=64)),
    "falcon_h1": ("falcon_h1", dict(mamba_d_conv=4, mamba_d_head=8, mamba_d_ssm=32, mamba_d_state=8,
                                    mamba_n_heads=4, mamba_chunk_size=8, mlp_expansion_factor=2,
                                    tie_word_embeddings=True)),
}

FAMILIES = tuple(CONFIGS)


def build(family: str, seed: int = 0, dtype: Any = mx.float32) -> nn.Module:
    """A tiny random mlx-lm model of ``family`` (evaluated, in ``dtype``)."""
    module_name, extra = CONFIGS[family]
    arch = importlib.import_module(f"mlx_lm.models.{module_name}")
    fields = dict(_COMMON, model_type=family, **extra)
    args = arch.ModelArgs.from_dict(fields)
    mx.random.seed(seed)
    model = arch.Model(args)
    if dtype != mx.float32:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model
