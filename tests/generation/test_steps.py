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


def test_a_value_read_inside_a_step_scope_does_not_carry_to_other_steps(model):
    with pytest.raises(ValueError, match=r"traced at .*test_steps.py:\d+ writes, at generation step 1.*exists only "
                                         r"at other steps.*read inside `with gen.steps"):
        with model.generate(PROMPT, 4) as gen:
            with gen.steps[0]:
                prompt_last = model.layers[0].output[:, -1]
            with gen.steps[1:]:
                model.layers[2].output[:, -1] = model.layers[2].output[:, -1] + prompt_last
    with model.generate(PROMPT, 4, ignore_eos=True) as gen:  # saved, it is the prompt pass's value alone
        with gen.steps[0]:
            prompt_last = model.layers[0].output[:, -1]
        kept = prompt_last.save("kept")
        every = model.layers[0].output[:, -1].save("every")
    assert gen.saved_steps["kept"] == [0] and kept.shape == (1, 64)
    assert mx.array_equal(kept, every[0])


@pytest.mark.parametrize("key", [6, slice(6, None), slice(7, 9)])
def test_a_step_that_never_runs_is_refused_at_its_line(model, key):
    with pytest.raises(IndexError, match=r"never runs: this generation's steps are 0 \(the prompt pass\) to 5"):
        with model.generate(PROMPT, 6) as gen:
            with gen.steps[key]:
                model.layers[1].output[:, -1] = 0.0


@pytest.mark.parametrize("outer, inner", [(0, slice(1, None)), (slice(1, None, 2), slice(2, None, 2)),
                                          (slice(4, None), slice(0, 3))])
def test_nested_step_scopes_without_a_common_step_are_refused(model, outer, inner):
    with pytest.raises(IndexError, match="no step is in all of them"):
        with model.generate(PROMPT, 6) as gen:
            with gen.steps[outer]:
                with gen.steps[inner]:
                    model.layers[1].output[:, -1] = 0.0
    with model.generate(PROMPT, 6, ignore_eos=True) as gen:  # nested scopes with common steps apply there
        with gen.steps[1:]:
            with gen.steps[::2]:
                model.layers[1].output[:, -1].save("common")
    assert gen.saved_steps["common"] == [2, 4]


@pytest.mark.parametrize("compile", MODES)
def test_an_absolute_token_slice_lands_at_the_steps_it_names(model, compile):
    ids = model.encode(PROMPT)
    start, stop = len(ids) - 2, len(ids) + 2  # the prompt's last two positions and the first two fed tokens

    def zero_span(h):
        return mx.concatenate([h[:, :start], mx.zeros_like(h[:, start:stop]), h[:, stop:]], axis=1)

    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as gen:
        model.layers[1].output[:, start:stop] = 0.0
        logits = model.output[:, -1].save()
    for k in range(6):
        expected = full_forward_logits(model.model, ids + gen.tokens[:k], {1: zero_span})
        assert mx.allclose(logits[k, 0], expected, atol=1e-4), f"step {k}"


def test_a_read_after_an_absolute_position_write_keeps_every_step(model):
    with model.generate(PROMPT, 4, ignore_eos=True) as gen:
        model.layers[1].output[:, 3] = 0.0
        newest = model.layers[1].output[:, -1].save("newest")
    assert gen.saved_steps["newest"] == [0, 1, 2, 3] and newest.shape == (4, 1, 64)
