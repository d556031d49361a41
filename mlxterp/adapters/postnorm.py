"""Layers with norms after a half as well as (or instead of) before it:

- Gemma 2 and 3: ``h = x + post_attention_layernorm(self_attn(input_layernorm(x)))``,
  ``out = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))``; Gemma 2 soft-caps its
  logits (``tanh(logits / c) * c``) and its attention scores (see :mod:`.attention`).
- GLM-4: the same with ``post_self_attn_layernorm`` / ``post_attention_layernorm`` / ``post_mlp_layernorm``.
- OLMo 2: norms only after: ``h = x + post_attention_layernorm(self_attn(x))``,
  ``out = h + post_feedforward_layernorm(mlp(h))``.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .base import Residual
from .llama import family


def _softcapped_logits(raw: nn.Module, head: Callable[[mx.array], mx.array], hidden: mx.array) -> mx.array:
    cap = raw.final_logit_softcapping
    return mx.tanh(head(hidden) / cap) * cap


_GEMMA = dict(head=None, ln2="pre_feedforward_layernorm",
              residual=Residual(attn_out_norm="post_attention_layernorm", mlp_out_norm="post_feedforward_layernorm"))

ARCHITECTURES = {
    "gemma2": family("gemma2", logits=_softcapped_logits, attention="softcap", **_GEMMA),
    "gemma3_text": family("gemma3_text", **dict(_GEMMA, head="lm_head")),
    "glm4": family("glm4", tie_flag=None, residual=Residual(attn_out_norm="post_self_attn_layernorm",
                                             mlp_out_norm="post_mlp_layernorm")),
    "olmo2": family("olmo2", ln1=None, ln2=None,
                    residual=Residual(attn_out_norm="post_attention_layernorm",
                                      mlp_out_norm="post_feedforward_layernorm")),
}
