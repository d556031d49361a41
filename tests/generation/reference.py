"""Independent references for generation tests: mlx-lm's own loop, and hand-written llama forwards."""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import make_prompt_cache

from tests.models import reference_llama_forward

Edit = Callable[[mx.array], mx.array]


def mlx_lm_tokens(module: nn.Module, ids: list[int], n: int, sampler=None) -> list[int]:
    """The first ``n`` tokens of mlx-lm's own ``generate_step`` (which ignores EOS)."""
    steps = generate_step(mx.array(ids), module, max_tokens=n, sampler=sampler)
    return [int(token) for token, _ in zip((t for t, _ in steps), range(n))]


def full_forward_logits(module: nn.Module, ids: list[int], at_layer: Optional[dict[int, Edit]] = None) -> mx.array:
    """Last-position logits ``(vocab,)`` of a full forward of ``ids`` without any cache."""
    return reference_llama_forward(module, mx.array([ids]), at_layer)[0, -1]


def cached_loop_logits(module: nn.Module, prompt: list[int], fed: list[int], layer: int, edit_last: Edit,
                       steps: Optional[set[int]] = None) -> list[mx.array]:
    """A hand-written llama loop on mlx-lm's KV cache: step 0 runs the prompt, step k feeds ``fed[k-1]``;
    at every step in ``steps`` (all if None) layer ``layer``'s output at the step's last token goes through
    ``edit_last`` (so each token receives the edit when it is the last one). Returns each step's logits."""
    inner = module.model
    cache = make_prompt_cache(module)
    out = []
    for k, tokens in enumerate([prompt] + [[t] for t in fed]):
        h = inner.embed_tokens(mx.array([tokens]))
        mask = create_attention_mask(h, cache[0])
        for i, block in enumerate(inner.layers):
            h = block(h, mask, cache=cache[i])
            if i == layer and (steps is None or k in steps):
                h = mx.concatenate([h[:, :-1], edit_last(h[:, -1:])], axis=1)
        h = inner.norm(h)
        logits = inner.embed_tokens.as_linear(h) if module.args.tie_word_embeddings else module.lm_head(h)
        out.append(logits[0, -1])
    return out
