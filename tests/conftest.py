"""Shared fixtures: tiny in-memory models (llama, gpt2, qwen2, quantized) and the real stories260K."""

from __future__ import annotations

import signal

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxterp import InterpretableModel
from tests.models import STORIES, CharTokenizer, tiny_llama_module


@pytest.fixture(scope="session", autouse=True)
def python_sigint_handler():
    """The tests that press Ctrl-C (``os.kill(pid, SIGINT)``) expect Python's own handler. A shell starts a
    background job (``pytest &``, ``nohup``) with SIGINT ignored, and Python then leaves it ignored: install
    the default handler for the session (and put back what was there)."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def llama_module() -> nn.Module:
    return tiny_llama_module()


@pytest.fixture()
def model(llama_module: nn.Module) -> InterpretableModel:
    """A fresh wrapper around the shared tiny llama (fresh compile cache and stats per test)."""
    return InterpretableModel(llama_module, tokenizer=CharTokenizer())


@pytest.fixture()
def tokens() -> mx.array:
    return mx.array([[1, 5, 9, 13, 17, 21, 25]])


@pytest.fixture(scope="session")
def stories() -> InterpretableModel:
    if not STORIES.is_dir():
        pytest.skip(f"real-model tier: {STORIES} is absent (the shared models folder is not beside the repo)")
    import mlx_lm

    module, tokenizer = mlx_lm.load(str(STORIES))
    return InterpretableModel(module, tokenizer=tokenizer)


