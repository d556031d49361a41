"""Turn boundaries read from the chat template, against spans written by hand for ChatML (SmolLM2's
template), Llama 3 and Gemma 3, and properties over random conversations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation.chat_tokenizers import CHARS, chat_tokenizer
from tests.conversation.conftest import MESSAGES

SYSTEM = [{"role": "system", "content": "Be brief."}] + MESSAGES
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

# Expected layouts, counted by hand: every character is one token, every special marker one token.
# ChatML turn: <|im_start|> + "user\n" (5) + content + <|im_end|> + "\n"; SmolLM2's template writes its default
# system prompt first when no system message is given: 1 + "system\n" (7) + 68 characters + 2 = 78 tokens.
# Contents: "What is the capital of France?" 30, "Paris." 6, "And of Italy?" 13, "Be brief." 9.
HAND = {
    ("chatml", "MESSAGES"): dict(
        preamble=(0, 78),
        spans=[(78, 116), (116, 135), (135, 156)],  # 1+5+30+2, 1+"assistant\n"(10)+6+2, 1+5+13+2
        contents=[(84, 114), (127, 133), (141, 154)],
        prompt=(156, 167),  # <|im_start|> + "assistant\n"
        texts=["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n",
               "<|im_start|>assistant\nParis.<|im_end|>\n", "<|im_start|>user\nAnd of Italy?<|im_end|>\n"],
        preamble_text=SMOL_SYSTEM, prompt_text="<|im_start|>assistant\n"),
    ("chatml", "SYSTEM"): dict(
        preamble=(0, 0),  # a system message given: no default one
        spans=[(0, 19), (19, 57), (57, 76), (76, 97)],  # 1+"system\n"(7)+9+2, then as above
        contents=[(8, 17), (25, 55), (68, 74), (82, 95)],
        prompt=(97, 108)),
    # Llama 3: <|begin_of_text|> before the first turn; a turn is <|start_header_id|> + role + <|end_header_id|>
    # + "\n\n" + content + <|eot_id|>.
    ("llama3", "MESSAGES"): dict(
        preamble=(0, 1),
        spans=[(1, 40), (40, 60), (60, 82)],  # 1+4+1+2+30+1, 1+9+1+2+6+1, 1+4+1+2+13+1
        contents=[(9, 39), (53, 59), (68, 81)],
        prompt=(82, 95),  # 1+9+1+2
        texts=["<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>",
               "<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>"],
        preamble_text="<|begin_of_text|>", prompt_text="<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("llama3", "SYSTEM"): dict(
        preamble=(0, 1),
        spans=[(1, 21), (21, 60), (60, 80), (80, 102)],  # 1+6+1+2+9+1, then as above
        contents=[(11, 20), (29, 59), (73, 79), (88, 101)],
        prompt=(102, 115)),
    # Gemma 3: <bos>; a turn is <start_of_turn> + role ("model" for the assistant) + "\n" + content +
    # <end_of_turn> + "\n"; the system prompt is folded into the first user turn (+ "\n\n"): its own span is empty.
    ("gemma3", "MESSAGES"): dict(
        preamble=(0, 1),
        spans=[(1, 39), (39, 54), (54, 75)],  # 1+5+30+2, 1+"model\n"(6)+6+2, 1+5+13+2
        contents=[(7, 37), (46, 52), (60, 73)],
        prompt=(75, 82),  # 1+6
        texts=["<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n",
               "<start_of_turn>model\nParis.<end_of_turn>\n", "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n"],
        preamble_text="<bos>", prompt_text="<start_of_turn>model\n"),
    ("gemma3", "SYSTEM"): dict(
        preamble=(0, 1),
        spans=[(1, 1), (1, 50), (50, 65), (65, 86)],  # system folded: 1+5+"Be brief.\n\n"(11)+30+2
        contents=[(1, 1), (18, 48), (57, 63), (71, 84)],
        prompt=(86, 93),
        texts=["", "<start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n",
               "<start_of_turn>model\nParis.<end_of_turn>\n", "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n"]),
}


def _pair(s: slice) -> tuple:
    return s.start, s.stop


@pytest.mark.parametrize("family, which", sorted(HAND))
def test_spans_equal_the_hand_written_ones(chat, family, which):
    model = chat(family)
    conv = model.conversation(MESSAGES if which == "MESSAGES" else SYSTEM)
    hand = HAND[family, which]
    assert _pair(conv.preamble) == hand["preamble"]
    assert [_pair(t.span) for t in conv.turns] == hand["spans"]
    assert [_pair(t.content) for t in conv.turns] == hand["contents"]
    assert [t.role for t in conv.turns] == [m["role"] for m in conv.messages]
    assert _pair(conv.generation_prompt) == hand["prompt"] and len(conv.tokens) == hand["prompt"][1]
    decode = model.tokenizer.decode
    for i, text in enumerate(hand.get("texts", [])):
        assert decode(conv.tokens[conv.turn(i)]) == text
        assert decode(conv.tokens[conv.turn(i, content_only=True)]) == conv.messages[i]["content"] * bool(text)
    if "preamble_text" in hand:
        assert decode(conv.tokens[conv.preamble]) == hand["preamble_text"]
        assert decode(conv.tokens[conv.generation_prompt]) == hand["prompt_text"]


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma3"])
def test_tokens_are_the_templates_rendering(chat, family):
    model = chat(family)
    conv = model.conversation(MESSAGES)
    assert conv.tokens == model.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert conv.text == model.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)


def test_turn_indices_count_from_the_end_and_spans_are_slices(chat):
    conv = chat().conversation(MESSAGES)
    assert conv.turn(-1) == conv.turn(2) == conv.turns[2].span
    assert conv.turn(-3, content_only=True) == slice(84, 114)
    assert conv.labels == ["0 user", "1 assistant", "2 user"]
    assert repr(conv.turns[1]) == "Turn('assistant', span=116:135, content=127:133)"


def test_generation_prompt_by_default_unless_the_assistant_spoke_last(chat):
    model = chat("llama3")
    assert model.conversation(MESSAGES).add_generation_prompt
    ended = model.conversation(MESSAGES[:2])
    assert not ended.add_generation_prompt and _pair(ended.generation_prompt) == (60, 60)
    plain = model.conversation(MESSAGES, add_generation_prompt=False)
    assert plain.tokens == model.conversation(MESSAGES).tokens[:82]


def test_adding_messages_and_replies_gives_new_conversations_sharing_the_cache(chat):
    model = chat("gemma3")
    first = model.conversation(MESSAGES[:1])
    second = first.reply("Paris.") + MESSAGES[2]
    assert second.messages == MESSAGES and second.tokens == model.conversation(MESSAGES).tokens
    assert second.cache is first.cache and model.conversation(MESSAGES).cache is not first.cache
    assert first.messages == MESSAGES[:1]  # unchanged
    more = first + [MESSAGES[1], MESSAGES[2]]
    assert more.tokens == second.tokens
    first.messages[0]["content"] = "edited"  # a copy
    assert first.messages == MESSAGES[:1]


_TEXT = st.text(alphabet=CHARS.replace("\n", ""), min_size=0, max_size=12)


@settings(max_examples=30, deadline=None)
@given(family=st.sampled_from(["chatml", "llama3", "gemma3"]), system=st.booleans(),
       contents=st.lists(_TEXT, min_size=1, max_size=5), prompt=st.booleans())
def test_turns_tile_the_conversation_and_contents_are_the_messages(family, system, contents, prompt):
    tokenizer = _tokenizer(family)
    from mlxterp.conversation import Conversation

    messages = [{"role": "system", "content": "Sys."}] if system else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(contents)]
    conv = Conversation(tokenizer, messages, prompt)
    turns = conv.turns
    assert conv.preamble.stop == turns[0].span.start
    assert all(a.span.stop == b.span.start for a, b in zip(turns, turns[1:]))
    assert turns[-1].span.stop == conv.generation_prompt.start and conv.generation_prompt.stop == len(conv.tokens)
    assert (conv.generation_prompt.stop > conv.generation_prompt.start) == prompt
    trims = family != "chatml"  # Llama 3 and Gemma trim the content
    for turn, message in zip(turns, messages):
        assert turn.span.start <= turn.content.start <= turn.content.stop <= turn.span.stop
        if family == "gemma3" and message["role"] == "system":
            assert turn.span.start == turn.span.stop  # folded into the first user turn
            continue
        text = message["content"].strip() if trims else message["content"]
        assert tokenizer.decode(conv.tokens[turn.content]) == text


_TOKENIZERS: dict = {}


def _tokenizer(family: str):
    if family not in _TOKENIZERS:
        _TOKENIZERS[family] = chat_tokenizer(family)
    return _TOKENIZERS[family]
