"""Attention internals inside invokes: reads and writes of q, k, v (after RoPE), scores, pattern and per-head
outputs at each invoke's own last position equal the hand-written forward run on each prompt alone (the
view cuts both token axes of scores and pattern to the invoke's length)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from tests.reference import llama_forward

PROMPTS = ["hello there", "hi", "abcdefg"]  # 12, 3 and 8 tokens: right-padded together
# point -> the index of its last query position (q, k, v, heads: (batch, seq, heads, dim); scores and
# pattern: (batch, heads, query, key))
LAST = {"q": (slice(None), -1), "k": (slice(None), -1), "v": (slice(None), -1), "heads": (slice(None), -1),
        "scores": (slice(None), slice(None), -1), "pattern": (slice(None), slice(None), -1)}


def changed(point, x):
    """What the test writes at the last position: scaled (scores and pattern: the first key's entry)."""
    x = mx.array(x)
    index = LAST[point] + ((0,) if point in ("scores", "pattern") else ())
    x[index] = x[index] * 2.0 + 0.25
    return x


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("point", list(LAST))
def test_attention_internals_in_invokes_equal_each_prompt_alone(model, point, compile):
    with model.trace(compile=compile, capture="saved") as tr:
        for k, prompt in enumerate(PROMPTS):
            with tr.invoke(prompt):
                attn = model.layers[1].attn
                index = LAST[point] + ((0,) if point in ("scores", "pattern") else ())
                value = getattr(attn, point)
                value[index] = value[index] * 2.0 + 0.25
                getattr(model.layers[2].attn, point).save(f"read{k}")
                model.output.save(f"out{k}")
    for k, prompt in enumerate(PROMPTS):
        seen = {}

        def hook(site, x):
            if site == (point, 1):
                x = changed(point, x)
            if site == (point, 2):
                seen["read"] = x
            return x

        tokens = mx.array([model.tokenizer.encode(prompt)])
        logits = llama_forward(model.model, tokens, hook)
        np.testing.assert_allclose(np.array(tr.saved_values[f"out{k}"]), np.array(logits), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.array(tr.saved_values[f"read{k}"]), np.array(seen["read"]), rtol=1e-4,
                                   atol=1e-4)
