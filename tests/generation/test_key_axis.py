"""Attention internals in generation: ``k``/``v`` are each step's own keys and values and a write to them is
stored in the KV cache; ``scores``/``pattern`` key positions are absolute, so a write at key ``p`` holds at
every step; negative key indices count from each step's newest key. Checked against the hand-written
forward of the whole generated sequence (tests/reference.py)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from tests.generation.test_families import RotatingLlama
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import llama_forward

PROMPT = "hello there"  # 12 tokens with the BOS
LAYER = 1


def full_forward(model, ids, edits):
    """Logits of the whole sequence ``ids`` with ``edits[point](value)`` applied at layer LAYER."""
    def hook(site, value):
        return edits[site[0]](mx.array(value)) if site[1:] == (LAYER,) and site[0] in edits else value
    return llama_forward(model.model, mx.array([ids]), hook)[0]


def step_logits_match(gen, logits, expected, prompt_len):
    for k in range(len(gen.tokens)):
        assert mx.allclose(logits[k, 0], expected[prompt_len - 1 + k], atol=1e-4), f"step {k}"


def half_at(axis_index):
    def edit(value):
        value[axis_index] = value[axis_index] * 0.5 + 0.25
        return value
    return edit


@pytest.mark.parametrize("compile", [False, "auto"])
@pytest.mark.parametrize("point, index", [("k", (slice(None), 3)), ("v", (slice(None), 3)),
                                          ("scores", (Ellipsis, 3)), ("pattern", (Ellipsis, 3))])
def test_a_write_at_key_position_p_holds_at_every_step(model, compile, point, index):
    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as gen:
        site = getattr(model.layers[LAYER].attn, point)
        site[index] = site[index] * 0.5 + 0.25
        logits = model.output[:, -1].save()
    ids = model.encode(PROMPT)
    expected = full_forward(model, ids + gen.tokens[:-1], {point: half_at(index)})
    step_logits_match(gen, logits, expected, len(ids))


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("point", ["k", "v"])
def test_a_newest_key_write_at_every_step_is_what_later_steps_attend_to(model, compile, point):
    with model.generate(PROMPT, 6, ignore_eos=True, compile=compile) as gen:
        site = getattr(model.layers[LAYER].attn, point)
        site[:, -1] = site[:, -1] * -1.0  # each step's newest key (value), never an empty cache slot
        logits = model.output[:, -1].save()
    ids = model.encode(PROMPT)
    n = len(ids)

    def edit(value):  # the prompt pass's last position, then every generated one
        value[:, n - 1:] = value[:, n - 1:] * -1.0
        return value

    step_logits_match(gen, logits, full_forward(model, ids + gen.tokens[:-1], {point: edit}), n)


@pytest.mark.parametrize("compile", [False, True])
def test_k_and_v_saves_are_each_steps_own_columns(model, compile):
    with model.generate(PROMPT, 4, ignore_eos=True, compile=compile) as gen:
        keys = model.layers[LAYER].attn.k.save()
        newest = model.layers[LAYER].attn.v[:, -1].save()
    ids = model.encode(PROMPT)
    seen = {}
    llama_forward(model.model, mx.array([ids + gen.tokens[:-1]]), lambda s, v: seen.setdefault(s, v))
    assert [k.shape for k in keys] == [(1, 12, 2, 16)] + [(1, 1, 2, 16)] * 3
    for step in range(4):
        position = 11 + step
        assert mx.allclose(keys[step][:, -1], seen[("k", LAYER)][:, position], atol=1e-5)
        assert mx.allclose(newest[step], seen[("v", LAYER)][:, position], atol=1e-5)


def test_newest_key_index_counts_from_each_steps_newest_key(model):
    with model.generate(PROMPT, 5, ignore_eos=True) as gen:
        scores = model.layers[LAYER].attn.scores
        scores[..., -1] = scores[..., -1] + 3.0
        pattern = model.layers[LAYER].attn.pattern.save()
        logits = model.output[:, -1].save()
    ids = model.encode(PROMPT)
    n = len(ids)

    def edit(value):  # prompt rows: key n - 1 (the prompt pass's newest); generated row t: key t
        value[:, :, :n, n - 1] = value[:, :, :n, n - 1] + 3.0
        for t in range(n, value.shape[2]):
            value[:, :, t, t] = value[:, :, t, t] + 3.0
        return value

    step_logits_match(gen, logits, full_forward(model, ids + gen.tokens[:-1], {"scores": edit}), n)
    assert [p.shape for p in pattern] == [(1, 4, n, n)] + [(1, 4, 1, n + k) for k in range(1, 5)]  # real keys


def test_compile_true_refuses_a_key_axis_program_at_its_line(model):
    with pytest.raises(ValueError, match=r"scores\] traced at .*test_key_axis.py:\d+ has a key axis.*compile='auto'"):
        with model.generate(PROMPT, 3, compile=True):
            model.layers[LAYER].attn.scores[..., -1] = 0.0
    with model.generate(PROMPT, 3, compile="auto") as gen:  # auto decodes it eagerly
        model.layers[LAYER].attn.pattern[..., 0].save()
    assert gen.mode == "eager"


def test_padded_rows_with_key_axis_writes_equal_their_prompts_alone(model):
    prompts = ["hi", "hello there", "a cat"]

    def run(p):
        with model.generate(p, 5, ignore_eos=True) as gen:
            scores = model.layers[LAYER].attn.scores
            model.layers[LAYER].attn.scores = scores * 0.0  # uniform attention: padding must stay hidden
            model.layers[0].attn.pattern[..., -1] = 0.5
            last = model.layers[LAYER].attn.pattern[:, :, -1, -2:].save()
        return gen.tokens, last

    tokens, last = run(prompts)
    for row, p in enumerate(prompts):
        alone_tokens, alone_last = run(p)
        assert tokens[row] == alone_tokens
        np.testing.assert_allclose(np.array(last[:, row]), np.array(alone_last[:, 0]), atol=1e-5)


def test_absolute_key_positions_in_a_padded_batch_are_refused(model):
    with pytest.raises(ValueError, match="absolute token position.*different lengths"):
        with model.generate(["hi", "hello there"], 3):
            model.layers[LAYER].attn.pattern[..., 1] = 0.0


def test_a_key_index_past_a_steps_keys_is_absent_there(model):
    with model.generate(PROMPT, 4, ignore_eos=True) as gen:  # 12 keys at step 0, 13 at step 1, 14 at step 2
        pattern = model.layers[LAYER].attn.pattern
        pattern[..., -14].save("back")
        pattern[..., 13].save("ahead")
        pattern[..., 0].save("first")
        pattern[..., -1].save("newest")
    assert gen.saved_steps == {"back": [2, 3], "ahead": [2, 3], "first": [0, 1, 2, 3], "newest": [0, 1, 2, 3]}
    assert mx.array_equal(gen.get("back")[0], gen.get("first")[2])
    assert mx.array_equal(gen.get("ahead")[0], gen.get("newest")[2])


def test_attention_internals_on_a_cache_without_ordered_keys_are_refused_at_their_line():
    module = tiny_llama_module()
    module.__class__ = RotatingLlama
    model = InterpretableModel(module, tokenizer=CharTokenizer())
    with pytest.raises(ValueError, match=r"traced at .*test_key_axis.py:\d+ reads attention internals.*Rotating"):
        with model.generate(PROMPT, 3):
            model.layers[LAYER].attn.k.save()
