"""``gen.steps[...]`` and token positions: what applies at which step, what saves hold, what is refused."""

from __future__ import annotations

import mlx.core as mx
import pytest

from tests.generation.conftest import MODES
from tests.generation.reference import cached_loop_logits, full_forward_logits

PROMPT = "hello there"  # 12 tokens with the BOS


def zero_at(position):
    def edit(h):
        return mx.concatenate([h[:, :position], mx.zeros_like(h[:, position:position + 1]), h[:, position + 1:]], 1)
    return edit


@pytest.mark.parametrize("compile", MODES)
@pytest.mark.parametrize("scoped", [True, False])
def test_absolute_prompt_position_lands_in_the_prompt_pass(model, compile, scoped):
    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as gen:
        if scoped:
            with gen.steps[0]:
                model.layers[2].output[:, 3] = 0.0
        else:
            model.layers[2].output[:, 3] = 0.0
        logits = model.output[:, -1].save()
    ids = model.encode(PROMPT)
    for k in range(6):  # position 3's edited keys and values stay in the cache for every later step
        expected = full_forward_logits(model.model, ids + gen.tokens[:k], {2: zero_at(3)})
        assert mx.allclose(logits[k, 0], expected, atol=1e-4), f"step {k}"


@pytest.mark.parametrize("compile", MODES)
def test_absolute_position_past_the_prompt_lands_at_its_decode_step(model, compile):
    ids = model.encode(PROMPT)
    target = len(ids) + 1  # the token fed at step 2
    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as gen:
        model.layers[1].output[:, target] = 0.0
        logits = model.output[:, -1].save()
    for k in range(6):
        edits = {1: zero_at(target)} if k >= 2 else None
        expected = full_forward_logits(model.model, ids + gen.tokens[:k], edits)
        assert mx.allclose(logits[k, 0], expected, atol=1e-4), f"step {k}"


@pytest.mark.parametrize("compile", MODES)
@pytest.mark.parametrize("key, steps", [(slice(1, None), {1, 2, 3, 4, 5}), (slice(3, 5), {3, 4}),
                                        (slice(0, None, 2), {0, 2, 4})])
def test_step_ranges_restrict_a_last_token_write(model, steer, compile, key, steps):
    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as gen:
        with gen.steps[key]:
            model.layers[1].output[:, -1] = model.layers[1].output[:, -1] + 3.0 * steer
        logits = model.output[:, -1].save()
    expected = cached_loop_logits(model.model, model.encode(PROMPT), gen.tokens[:-1], 1, lambda h: h + 3.0 * steer,
                                  steps)
    for k in range(6):
        assert mx.allclose(logits[k, 0], expected[k], atol=1e-4), f"step {k}"


def test_a_read_after_a_restricted_write_sees_the_unwritten_value_elsewhere(model, steer):
    with model.generate(PROMPT, 4, ignore_eos=True) as gen:
        before = model.layers[1].output[:, -1].save("before")
        with gen.steps[2]:
            model.layers[1].output = model.layers[1].output + steer
        after = model.layers[1].output[:, -1].save("after")
    for k in range(4):
        expected = steer[None] if k == 2 else mx.zeros((1, 64))
        assert mx.allclose(after[k] - before[k], expected, atol=1e-5), f"step {k}"


def test_saves_stack_per_step_or_list_when_shapes_differ(model):
    with model.generate(PROMPT, 5, ignore_eos=True) as gen:
        last = model.layers[0].output[:, -1].save()
        whole = model.layers[0].output.save()
        with gen.steps[0]:
            prompt_only = model.layers[0].output.save("prompt")
        with gen.steps[1:3]:
            some = model.layers[0].output[:, -1].save("some")
        at3 = model.layers[0].output[:, 3].save("at3")
    n = len(model.encode(PROMPT))
    assert last.shape == (5, 1, 64)
    assert isinstance(whole, list) and [w.shape for w in whole] == [(1, n, 64)] + [(1, 1, 64)] * 4
    assert prompt_only.shape == (1, n, 64) and mx.array_equal(prompt_only, whole[0])
    assert some.shape == (2, 1, 64) and mx.array_equal(some, last[1:3])
    assert at3.shape == (1, 64) and mx.array_equal(at3, whole[0][:, 3])
    assert gen.saved_steps["some"] == [1, 2] and gen.saved_steps["at3"] == [0]
    assert mx.array_equal(gen.get("some"), some)


def test_relative_position_outside_the_prompt_pass_is_refused(model):
    with pytest.raises(ValueError, match=r"indexes the token axis with -2.*step 1.*gen.steps\[0\]"):
        with model.generate(PROMPT, 3) as gen:
            model.layers[1].output[:, -2] = 0.0
    with model.generate(PROMPT, 3) as gen:  # restricted to the prompt pass it is fine
        with gen.steps[0]:
            model.layers[1].output[:, -2] = 0.0
    assert len(gen.tokens) == 3


def test_values_do_not_carry_across_steps(model):
    with pytest.raises(ValueError, match="exists only at other steps"):
        with model.generate(PROMPT, 3):
            early = model.layers[0].output[:, 3]
            model.layers[2].output[:, -1] = model.layers[2].output[:, -1] + early


def test_absolute_positions_in_a_padded_batch_are_refused(model):
    with pytest.raises(ValueError, match="different lengths"):
        with model.generate(["hi", "hello there"], 3):
            model.layers[1].output[:, 1] = 0.0


@pytest.mark.parametrize("key", [-1, slice(-2, None), "0", slice(0, 4, 0)])
def test_bad_step_keys(model, key):
    with pytest.raises((IndexError, TypeError), match="gen.steps"):
        with model.generate(PROMPT, 2) as gen:
            gen.steps[key]


def test_steps_only_inside_the_block(model):
    gen = model.generate(PROMPT, 2)
    with pytest.raises(RuntimeError, match="inside the"):
        gen.steps[0]
