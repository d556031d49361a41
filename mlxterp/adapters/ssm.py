"""State-space families: layer-level access only where there is no attention.

- Mamba: ``out = x + mixer(norm(x))`` under ``backbone.layers``; the mixer is a selective scan: no
  attention, no MLP, no attention pattern.
- Falcon-H1: attention and a Mamba mixer side by side on the same normed input, then an MLP:
  ``h = x + self_attn(ln(x)) + mamba(ln(x))``, ``out = h + feed_forward(pre_ff_layernorm(h))``.
  Attention internals cover the attention half; the Mamba half has none.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .base import MIXERS, SSM, Architecture, PositionLimit, Residual, arg
from .llama import family


def _falcon_logits(raw: nn.Module, head: Callable[[mx.array], mx.array], hidden: mx.array) -> mx.array:
    if arg(raw, "tie_word_embeddings"):  # mlx-lm rescales only the tied projection
        return head(hidden) * (raw.args.lm_head_multiplier / raw.args.embedding_multiplier)
    return head(hidden)


def _none(raw: nn.Module) -> PositionLimit:
    return PositionLimit("none", None, "a state-space model has no position limit")


ARCHITECTURES: dict[str, Architecture] = {
    "mamba": family("mamba", embed="backbone.embeddings", layers="backbone.layers", final_norm="backbone.norm_f",
                    attn=None, mlp=None, ln1="norm", ln2=None, residual=Residual(SSM), attention=None,
                    positions=_none,
                    lacks="mamba is a state-space model: its layers run a selective-scan mixer ('mixer') instead "
                          "of attention, and have no MLP; use the layer's input and output, or 'mixer'"),
    "falcon_h1": family("falcon_h1", final_norm="model.final_layernorm", mlp="feed_forward", ln2="pre_ff_layernorm",
                        residual=Residual(MIXERS), logits=_falcon_logits,
                        lacks="falcon_h1 layers run attention ('self_attn') and a Mamba mixer ('mamba') side by "
                              "side: attention internals cover the attention half only; the mixer has none"),
}
