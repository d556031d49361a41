"""Generation against independent references: mlx-lm's own loop, full forwards of the whole prefix, and a
hand-written KV-cache loop."""

from __future__ import annotations

import mlx.core as mx
import pytest

from tests.generation.conftest import MODES
from tests.generation.reference import cached_loop_logits, full_forward_logits, mlx_lm_tokens

PROMPT = "hello there"


@pytest.mark.parametrize("compile", MODES)
def test_greedy_without_interventions_is_mlx_lm(model, compile):
    gen = model.generate(PROMPT, 16, ignore_eos=True, compile=compile)
    assert gen.tokens == mlx_lm_tokens(model.model, model.encode(PROMPT), 16)
    assert gen.mode == ("compiled" if compile else "eager")


@pytest.mark.parametrize("compile", MODES)
def test_a_program_reading_only_an_early_layer_still_runs_every_layer(model, compile):
    # a trace stops its forward after the last event it reads; a decode step must not (cache, logits)
    with model.generate(PROMPT, 8, ignore_eos=True, compile=compile) as gen:
        early = model.layers[0].output[:, -1].save()
    assert gen.tokens == mlx_lm_tokens(model.model, model.encode(PROMPT), 8)
    assert early.shape == (8, 1, 64)


@pytest.mark.parametrize("compile", MODES)
def test_stories_greedy_text_is_mlx_lm_generate(stories, compile):
    import mlx_lm

    prompt = "Once upon a time"
    expected = mlx_lm.generate(stories.model, stories.tokenizer, prompt, max_tokens=40)
    gen = stories.generate(prompt, 40, compile=compile)
    assert gen.text == expected
    assert gen.tokens == mlx_lm_tokens(stories.model, stories.encode(prompt), len(gen.tokens))


@pytest.mark.parametrize("compile", MODES)
def test_whole_output_write_matches_full_forward_of_each_prefix(model, steer, compile):
    def edit(h):
        return h * 1.5 + steer

    with model.generate(PROMPT, 8, ignore_eos=True, compile=compile) as gen:
        model.layers[1].output = model.layers[1].output * 1.5 + steer
        logits = model.output[:, -1].save()
    ids = model.encode(PROMPT)
    assert logits.shape == (8, 1, 128)
    for k in range(8):
        expected = full_forward_logits(model.model, ids + gen.tokens[:k], {1: edit})
        assert mx.allclose(logits[k, 0], expected, atol=1e-4), f"step {k}"
    assert gen.tokens == [int(mx.argmax(logits[k, 0])) for k in range(8)]


@pytest.mark.parametrize("compile", MODES)
def test_last_token_write_matches_a_hand_written_cached_loop(model, steer, compile):
    with model.generate(PROMPT, 8, ignore_eos=True, compile=compile) as gen:
        model.layers[2].output[:, -1] = model.layers[2].output[:, -1] + 2.0 * steer
        logits = model.output[:, -1].save()
    expected = cached_loop_logits(model.model, model.encode(PROMPT), gen.tokens[:-1], 2, lambda h: h + 2.0 * steer)
    for k in range(8):
        assert mx.allclose(logits[k, 0], expected[k], atol=1e-4), f"step {k}"
    # the write changes the continuation: the reference is not trivially the unsteered one
    assert gen.tokens != mlx_lm_tokens(model.model, model.encode(PROMPT), 8)


@pytest.mark.parametrize("compile", MODES)
def test_batched_prompts_of_different_lengths_equal_single_generations(model, steer, compile):
    prompts = ["hi", "hello there, friend", "a cat"]

    def run(p):
        with model.generate(p, 10, ignore_eos=True, compile=compile) as gen:
            model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + steer
        return gen.tokens

    assert run(prompts) == [run(p) for p in prompts]


@pytest.mark.parametrize("compile", MODES)
def test_k_variants_of_one_prompt_equal_separate_generations(model, steer, compile):
    alphas = [0.0, 1.0, 3.0, -2.0]
    with model.generate([PROMPT] * 4, 10, ignore_eos=True, compile=compile) as gen:
        h = model.layers[1].output
        model.layers[1].output = h + mx.array(alphas)[:, None, None] * steer
    singles = []
    for a in alphas:
        with model.generate(PROMPT, 10, ignore_eos=True, compile=compile) as one:
            model.layers[1].output = model.layers[1].output + a * steer
        singles.append(one.tokens)
    assert gen.tokens == singles
    assert len({tuple(t) for t in singles}) > 1  # the alphas steer differently


def test_stories_batch_rows_equal_single_prompts(stories):
    prompts = ["Once upon a time", "The dog", "Lily and Tom went to the park and"]
    batched = stories.generate(prompts, 24, ignore_eos=True)
    assert batched.tokens == [stories.generate(p, 24, ignore_eos=True).tokens for p in prompts]
