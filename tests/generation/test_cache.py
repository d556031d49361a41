"""The compiled path's static KV cache grows with the generation: its size follows the tokens computed, never
``max_new_tokens``, and a generation that outgrows it continues exactly."""

from __future__ import annotations

import pytest

from mlxterp.generation.cache import buffer_size, grown_size
from tests.generation.reference import mlx_lm_tokens

PROMPT = "hello there"  # 12 tokens with the BOS


def static_runs(model) -> set[tuple]:
    """``(token shape, buffer size, prompt pass?)`` of every compiled step ``model``'s generations ran."""
    return {key for program in model._program_cache("generation").values() for key in program.static_runs}


@pytest.mark.parametrize("cap", [9, 5_000, 10**9])
def test_the_buffer_follows_the_tokens_generated_not_the_cap(model, cap):
    with model.generate(PROMPT, cap, compile=True) as gen:
        with gen.steps[8]:
            model.output[:, -1, 0] = 1e4  # EOS (id 0) at step 8: 8 tokens whatever the cap
    assert gen.finish_reason == "eos" and len(gen.tokens) == 8
    assert {size for _, size, _ in static_runs(model)} == {64}


def test_a_generation_past_the_first_buffer_grows_it_and_stays_exact(model):
    gen = model.generate(PROMPT, 70, ignore_eos=True, compile=True)
    assert gen.tokens == mlx_lm_tokens(model.model, model.encode(PROMPT), 70)
    # the prompt pass and the first decode steps on 64 columns; from step 53 (65 tokens) on 128
    assert {((1, 12), 64, True), ((1, 1), 64, False), ((1, 1), 128, False)} <= static_runs(model)


def test_buffer_sizes():
    assert [buffer_size(n) for n in (1, 64, 65, 128, 129, 1000)] == [64, 64, 128, 128, 256, 1024]
    assert grown_size(0, 12, 20) == 64 and grown_size(64, 64, 10**9) == 64
    assert grown_size(64, 65, 10**9) == 128 and grown_size(64, 65, 70) == 128
