"""Bad input to conversations fails at the call, says what was wrong and what to do, and leaves the model
and the conversation as they were."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlxterp import InterpretableModel
from mlxterp.conversation import ChatTemplateError, Conversation
from tests.conversation.chat_tokenizers import chat_tokenizer
from tests.conversation.conftest import MESSAGES
from tests.models import CharTokenizer


def test_a_tokenizer_without_chat_template(llama_module):
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        InterpretableModel(llama_module, tokenizer=CharTokenizer()).conversation(MESSAGES)
    with pytest.raises(ChatTemplateError, match="has no tokenizer"):
        InterpretableModel(llama_module).conversation(MESSAGES)


@pytest.mark.parametrize("family, messages, match", [
    ("gemma2", [{"role": "system", "content": "Be brief."}] + MESSAGES, "System role not supported"),
    ("gemma3", [MESSAGES[0], MESSAGES[0]], "roles must alternate"),
])
def test_a_conversation_the_template_cannot_render(llama_module, family, messages, match):
    model = InterpretableModel(llama_module, tokenizer=chat_tokenizer(family))
    with pytest.raises(ChatTemplateError, match=f"cannot render these messages.*{match}") as info:
        model.conversation(messages)
    assert info.value.__cause__ is not None  # the template's own error, chained


def test_a_template_that_rewrites_earlier_turns(llama_module):
    tokenizer = chat_tokenizer("chatml")
    # the last message alone is written in capitals: a prefix's rendering is not the start of the whole one
    tokenizer._tokenizer.chat_template = ("{% for m in messages %}{% if loop.last %}{{ m['content'] | upper }}"
                                          "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    model = InterpretableModel(llama_module, tokenizer=tokenizer)
    with pytest.raises(ChatTemplateError, match=r"renders messages\[:1\] as tokens that do not begin .* "
                                                r"messages\[:2\].*cannot be read"):
        model.conversation(MESSAGES[:2])


@pytest.mark.parametrize("messages, error, match", [
    ("hello", TypeError, r"messages: expected a list of messages such as \[\{'role': 'user'"),
    ([], ValueError, "at least one message"),
    ([{"role": "asistant", "content": "Hi"}], ValueError,
     r"messages\[0\] has role 'asistant' \(did you mean 'assistant'\?\); expected one of 'system', 'user'"),
    ([{"role": "narrator", "content": "Hi"}], ValueError, r"role 'narrator'; expected one of"),
    ([MESSAGES[0], {"role": "user"}], ValueError, r"messages\[1\] has no 'content'"),
    ([{"role": "user", "content": ["Hi"]}], TypeError, r"messages\[0\]\['content'\] is a list; expected"),
    ([("user", "Hi")], TypeError, r"messages\[0\]: expected a message dict"),
])
def test_malformed_messages(chat, messages, error, match):
    with pytest.raises(error, match=match):
        chat().conversation(messages)


def test_turn_index_out_of_range(chat):
    conv = chat().conversation(MESSAGES)
    with pytest.raises(IndexError, match=r"turn 3 is out of range: this conversation has 3 turns \(0 user, "
                                         r"1 assistant, 2 user\), valid indices 0 to 2 \(or -3 to -1\)"):
        conv.turn(3)
    with pytest.raises(IndexError, match="turn -4 is out of range"):
        conv.turn(-4, content_only=True)
    with pytest.raises(TypeError, match="turn index '2' is a str; expected an int"):
        conv.turn("2")


def test_adding_bad_messages_leaves_the_conversation(chat):
    conv = chat().conversation(MESSAGES)
    tokens = conv.tokens
    with pytest.raises(ValueError, match=r"the added message has role 'bot'"):
        conv + {"role": "bot", "content": "Rome."}
    with pytest.raises(TypeError, match="add a message dict"):
        conv + "Rome."
    with pytest.raises(TypeError, match="reply: expected the assistant's text"):
        conv.reply(3)
    assert conv.tokens == tokens and len(conv.turns) == 3


def test_a_conversation_of_another_tokenizer(chat, llama_module):
    conv = chat("llama3").conversation(MESSAGES)
    other = InterpretableModel(llama_module, tokenizer=chat_tokenizer("llama3"))
    with pytest.raises(ValueError, match=r"rendered with another tokenizer.*model.conversation\(conv.messages\)"):
        with other.trace(conv):
            pass


def test_turn_patching_needs_aligned_turns_and_leaves_the_model(chat):
    model = chat()
    before = [(k, mx.array(v)) for k, v in tree_flatten(model.model.parameters())]
    clean = model.conversation(MESSAGES)
    shorter = model.conversation([MESSAGES[0], {"role": "assistant", "content": "Rome"}, MESSAGES[2]])
    with pytest.raises(ValueError, match=r"turn 1 \(assistant\) is 19 tokens at 116:135 \(content 6\) in clean and "
                                         r"17 tokens at 116:133 \(content 4\) in corrupted.*as many tokens"):
        model.turn_patching(clean, shorter)
    with pytest.raises(ValueError, match=r"the same turns.*clean has 0 user, 1 assistant, 2 user; corrupted has "
                                         r"0 user"):
        model.turn_patching(clean, model.conversation(MESSAGES[:1]))
    with pytest.raises(TypeError, match="clean: expected a Conversation"):
        model.turn_patching("What is the capital of France?", clean)
    with pytest.raises(ValueError, match=r"turns: turn index 3 is out of range: the conversations have 3 turns"):
        model.turn_patching(clean, clean, turns=[3])
    with pytest.raises(ValueError, match="same last-position logits"):
        model.turn_patching(clean, model.conversation(MESSAGES))
    after = tree_flatten(model.model.parameters())
    assert all(k == k2 and mx.array_equal(v, v2) for (k, v), (k2, v2) in zip(before, after))


def test_turn_attention_needs_a_conversation(chat):
    with pytest.raises(TypeError, match="conv: expected a Conversation"):
        chat().turn_attention("What is the capital of France?")
    with pytest.raises(ValueError, match="layers: layer index 4 is out of range"):
        chat().turn_attention(chat().conversation(MESSAGES), layers=[4])


def test_add_generation_prompt_must_be_a_bool(chat):
    with pytest.raises(TypeError, match="add_generation_prompt: expected True, False or None"):
        Conversation(chat().tokenizer, MESSAGES, add_generation_prompt="yes")
