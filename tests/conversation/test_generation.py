"""Multi-turn generation: a continued conversation runs only what its cache lacks and generates, token for
token, what the whole conversation generated at once gives, and what mlx-lm's own generate gives from the
whole conversation's tokens (an independent reference)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxterp import InterpretableModel
from mlxterp import interventions as iv
from mlxterp.conversation import Conversation
from tests.conversation.chat_tokenizers import CHARS, chat_tokenizer
from tests.conversation.conftest import MESSAGES
from tests.generation.reference import mlx_lm_tokens
from tests.models import tiny_llama_module

MODES = [False, "auto"]  # eager on mlx-lm's cache; compiled decode steps on the static cache
N = 6


def common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class TokenSpy:
    """Records the token count of every call of the model's embedding (an eager run's forwards)."""

    def __init__(self, monkeypatch):
        self.calls: list[int] = []
        original = nn.Embedding.__call__

        def spy(module, x):
            self.calls.append(int(x.shape[-1]))
            return original(module, x)

        monkeypatch.setattr(nn.Embedding, "__call__", spy)


@pytest.mark.parametrize("compile", MODES)
@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma3"])
def test_a_continued_conversation_equals_the_whole_one_and_mlx_lm(chat, llama_module, family, compile):
    model = chat(family)
    conv = model.conversation(MESSAGES[:1])
    first = model.generate(conv, N, ignore_eos=True, compile=compile)
    assert first.tokens == mlx_lm_tokens(llama_module, conv.tokens, N)
    assert conv.cache.reused == 0 and conv.cache.computed == len(conv.tokens)
    cached = conv.tokens + first.tokens[:-1]  # the last new token is never fed back
    assert conv.cache.tokens == cached

    follow = conv.reply(first) + {"role": "user", "content": "And of Italy?"}
    reply = model.generate(follow, N, ignore_eos=True, compile=compile)
    whole = model.generate(model.conversation(follow.messages), N, ignore_eos=True, compile=compile)
    assert reply.tokens == whole.tokens == mlx_lm_tokens(llama_module, follow.tokens, N)
    assert follow.cache is conv.cache and conv.cache.reused == common_prefix(cached, follow.tokens)
    assert conv.cache.computed == len(follow.tokens) - conv.cache.reused
    if family == "chatml":  # no trimming: the reply's tokens render as generated, and all of them are reused
        assert conv.cache.reused == len(cached)


def test_only_the_new_tokens_run(chat, monkeypatch):
    model = chat()
    conv = model.conversation(MESSAGES[:1])
    first = model.generate(conv, N, ignore_eos=True, compile=False)
    follow = conv.reply(first) + MESSAGES[2]
    spy = TokenSpy(monkeypatch)
    model.generate(follow, N, ignore_eos=True, compile=False).run()
    new = len(follow.tokens) - (len(conv.tokens) + N - 1)
    assert spy.calls == [new] + [1] * (N - 1)  # the new messages once, then one token per step


@pytest.mark.parametrize("compile", MODES)
def test_sampling_and_branches(chat, llama_module, compile):
    model = chat("gemma3")
    conv = model.conversation(MESSAGES)
    a = conv.reply("Rome.") + {"role": "user", "content": "And Spain?"}
    b = conv.reply("Rome!") + {"role": "user", "content": "Why?"}
    settings = dict(temperature=0.9, top_k=20, seed=3, ignore_eos=True, compile=compile)
    for branch in (a, b, a, conv, b):  # alternating branches reuse only what they share: still exact
        cached = conv.cache.tokens
        got = model.generate(branch, N, **settings).tokens
        assert got == model.generate(model.conversation(branch.messages), N, **settings).tokens
        assert conv.cache.reused == min(common_prefix(cached, branch.tokens), len(branch.tokens) - 1)
        assert conv.cache.tokens == branch.tokens + got[:-1]


def test_programs_that_record_run_the_whole_conversation_and_leave_the_cache(chat):
    model = chat()
    steer = mx.random.normal((64,), key=mx.random.key(7)) * 0.5
    conv = model.conversation(MESSAGES)
    model.generate(conv, N, ignore_eos=True).run()
    kept, stats = conv.cache.tokens, (conv.cache.reused, conv.cache.computed)
    follow = conv + [{"role": "assistant", "content": "Rome."}, {"role": "user", "content": "Thanks!"}]
    fresh = model.conversation(follow.messages)
    steered = model.generate(follow, N, ignore_eos=True, interventions={"layers.2": iv.add_vector(steer)})
    assert steered.tokens == model.generate(fresh, N, ignore_eos=True,
                                            interventions={"layers.2": iv.add_vector(steer)}).tokens
    with model.generate(follow, N, ignore_eos=True) as gen:
        with gen.steps[0]:
            prompt = model.layers[1].output.save()
    assert prompt.shape == (1, len(follow.tokens), 64)  # the whole conversation's prompt pass
    assert conv.cache.tokens == kept and (conv.cache.reused, conv.cache.computed) == stats


def test_another_model_or_new_weights_start_from_nothing(llama_module):
    tokenizer = chat_tokenizer("chatml")
    module = tiny_llama_module(seed=5)
    model = InterpretableModel(module, tokenizer=tokenizer)
    conv = model.conversation(MESSAGES)
    model.generate(conv, N, ignore_eos=True).run()
    follow = conv + [{"role": "assistant", "content": "Rome."}, MESSAGES[0]]
    other = InterpretableModel(llama_module, tokenizer=tokenizer)  # the same tokenizer, other weights
    assert other.generate(follow, N, ignore_eos=True).tokens == mlx_lm_tokens(llama_module, follow.tokens, N)
    assert conv.cache.reused == 0
    model.generate(follow, N, ignore_eos=True).run()
    module.update({"model": {"norm": {"weight": module.model.norm.weight * 2.0}}})  # new weight arrays
    again = follow + [{"role": "assistant", "content": "Ok."}, MESSAGES[2]]
    assert model.generate(again, N, ignore_eos=True).tokens == mlx_lm_tokens(module, again.tokens, N)
    assert conv.cache.reused == 0
    model.generate(again, N, ignore_eos=True).run()
    assert conv.cache.reused == len(again.tokens) - 1  # unchanged weights: reused (compiled traces between)
    module.model.layers[0].self_attn.k_proj.weight[:, :8] = 0.0  # written in place
    last = again + [{"role": "assistant", "content": "Fine."}, MESSAGES[2]]
    assert model.generate(last, N, ignore_eos=True).tokens == mlx_lm_tokens(module, last.tokens, N)
    assert conv.cache.reused == 0


def test_a_batch_of_conversations_generates_each_row_as_alone(chat):
    model = chat("llama3")
    a, b = model.conversation(MESSAGES), model.conversation(MESSAGES[:1])
    both = model.generate([a, b], N, ignore_eos=True)
    assert both.tokens == [model.generate(c, N, ignore_eos=True).tokens
                           for c in (model.conversation(MESSAGES), model.conversation(MESSAGES[:1]))]
    assert a.cache.size == 0 and b.cache.size == 0  # a batch keeps nothing


def test_generation_needs_a_generation_prompt(chat):
    model = chat()
    ended = model.conversation(MESSAGES[:2])
    with pytest.raises(ValueError, match=r"has no generation prompt.*add a user message.*add_generation_prompt=True"):
        model.generate(ended, N)
    with pytest.raises(ValueError, match="has no generation prompt"):
        model.generate([model.conversation(MESSAGES), ended], N)
    with pytest.raises(TypeError, match="is in it already: generate it without chat=True"):
        model.generate(model.conversation(MESSAGES), N, chat=True)
    assert ended.cache.size == 0


def test_a_cache_copy_is_independent(chat):
    model = chat()
    conv = model.conversation(MESSAGES)
    model.generate(conv, N, ignore_eos=True).run()
    branch = Conversation(model.tokenizer, conv.messages, cache=conv.cache.copy())
    assert branch.cache.tokens == conv.cache.tokens
    model.generate(branch + [{"role": "assistant", "content": "x"}, MESSAGES[2]], N, ignore_eos=True).run()
    assert branch.cache.tokens != conv.cache.tokens and conv.cache.size == len(conv.tokens) + N - 1
    conv.cache.clear()
    assert conv.cache.size == 0 and branch.cache.size > 0


_MODELS: dict = {}
_WORDS = st.text(alphabet=CHARS.replace("\n", ""), min_size=1, max_size=8)


def _family_model(family: str) -> InterpretableModel:
    if family not in _MODELS:
        _MODELS[family] = InterpretableModel(tiny_llama_module(seed=2), tokenizer=chat_tokenizer(family))
    return _MODELS[family]


@settings(max_examples=12, deadline=None)
@given(family=st.sampled_from(["chatml", "llama3", "gemma3"]), compile=st.sampled_from([False, "auto"]),
       first=_WORDS, moves=st.lists(st.tuples(st.sampled_from(["generated", "typed", "back"]), _WORDS, _WORDS),
                                    min_size=1, max_size=4))
def test_any_sequence_of_turns_generates_what_the_whole_conversation_does(family, compile, first, moves):
    model = _family_model(family)
    history = [model.conversation([{"role": "user", "content": first}])]
    conv, last = history[0], None
    for move, reply, question in [("start", "", "")] + moves:
        if move == "typed":
            conv = conv.reply(reply) + {"role": "user", "content": question}
        elif move == "generated":
            conv = conv.reply(last) + {"role": "user", "content": question}
        elif move == "back":  # a branch from an earlier turn: the cache keeps only what the branches share
            conv = history[len(question) % len(history)].reply(reply) + {"role": "user", "content": question}
        cached = conv.cache.tokens
        last = model.generate(conv, 4, ignore_eos=True, compile=compile)
        alone = model.generate(model.conversation(conv.messages), 4, ignore_eos=True, compile=compile)
        assert last.tokens == alone.tokens == mlx_lm_tokens(model.model, conv.tokens, 4)
        assert conv.cache.reused == min(common_prefix(cached, conv.tokens), len(conv.tokens) - 1)
        history.append(conv)
