"""Conversation fixtures: the tiny llama with real chat tokenizers of three template families."""

from __future__ import annotations

import pytest

from mlxterp import InterpretableModel
from tests.conversation.chat_tokenizers import chat_tokenizer

MESSAGES = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"}]


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {}


@pytest.fixture()
def chat(llama_module, tokenizers):
    """``chat(family)``: a fresh InterpretableModel of the tiny llama with that family's chat tokenizer."""

    def make(family: str = "chatml") -> InterpretableModel:
        if family not in tokenizers:
            tokenizers[family] = chat_tokenizer(family)
        return InterpretableModel(llama_module, tokenizer=tokenizers[family])

    return make
