"""Generation reads and writes what a trace can: attention internals and residual values."""

from __future__ import annotations

import mlx.core as mx
import pytest

from tests.generation.conftest import MODES

PROMPT = "hello"  # 6 tokens with the BOS


def test_attention_pattern_per_step_equals_a_full_forward_of_the_prefix(model):
    with model.generate(PROMPT, 4, ignore_eos=True) as gen:
        pattern = model.layers[1].attn.pattern[:, :, -1].save()  # the newest token's attention, every step
    assert gen.mode == "eager"  # auto: attention internals run on mlx-lm's cache (one key column per position)
    ids = model.encode(PROMPT)
    assert [p.shape for p in pattern] == [(1, 4, 6 + k) for k in range(4)]
    for k in range(4):
        with model.trace([ids + gen.tokens[:k]]):
            expected = model.layers[1].attn.pattern[:, :, -1].save()
        assert mx.allclose(pattern[k], expected, atol=1e-5), f"step {k}"


@pytest.mark.parametrize("compile", MODES)
def test_resid_post_write_is_the_layer_output_write(model, steer, compile):
    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as a:
        model.layers[1].resid_post[:, -1] = model.layers[1].resid_post[:, -1] + steer
    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as b:
        model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + steer
    assert a.tokens == b.tokens


def test_positions_past_every_step_are_refused_while_recording(model):
    with pytest.raises(IndexError, match="out of range|outside"):
        with model.generate(PROMPT, 3):
            model.layers[1].output[:, 6 + 2] = 0.0  # positions 0..7 exist (6 prompt + 2 fed tokens)
    with model.generate(PROMPT, 3, ignore_eos=True):
        model.layers[1].output[:, 6 + 1] = 0.0  # the last fed token's position is fine
