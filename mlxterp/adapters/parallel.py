"""Parallel residual layers: ``out = x + attn(ln1(x)) + mlp(ln2(x))``, attention and MLP reading the same
residual. GPT-J, Phi, Cohere and Cohere 2 share one norm (``ln1`` is ``ln2``); GPT-NeoX (when
``use_parallel_residual``) has two; StableLM and GPT-NeoX are sequential when that flag is off.
Cohere multiplies its logits by ``logit_scale``.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .base import PARALLEL, Architecture, Residual, arg, rotary
from .llama import family


def _cohere_logits(raw: nn.Module, head: Callable[[mx.array], mx.array], hidden: mx.array) -> mx.array:
    return head(hidden) * raw.model.args.logit_scale


_SHARED_NORM = dict(ln2="input_layernorm", residual=Residual(PARALLEL))


def _stablelm(raw: nn.Module) -> Architecture:
    if arg(raw, "use_parallel_residual", False):
        return family("stablelm", tie_flag=None, **_SHARED_NORM)
    return family("stablelm", tie_flag=None)


def _gpt_neox(raw: nn.Module) -> Architecture:
    parallel = arg(raw, "use_parallel_residual", True)
    return family("gpt_neox", embed="model.embed_in", layers="model.h", final_norm="model.final_layer_norm",
                  head="model.embed_out", tie_flag=None, attn="attention",
                  residual=Residual(PARALLEL) if parallel else Residual(),
                  positions=rotary("max_position_embeddings"))


ARCHITECTURES = {
    "gptj": family("gptj", embed="model.wte", layers="model.h", final_norm="model.ln_f", attn="attn", ln1="ln_1",
                   ln2="ln_1", residual=Residual(PARALLEL), tie_flag=None, positions=rotary("n_positions")),
    "phi": family("phi", final_norm="model.final_layernorm", tie_flag=None, **_SHARED_NORM),
    "cohere": family("cohere", head=None, logits=_cohere_logits, **_SHARED_NORM),
    "cohere2": family("cohere2", head=None, logits=_cohere_logits, **_SHARED_NORM),
    "stablelm": _stablelm,
    "gpt_neox": _gpt_neox,
}
