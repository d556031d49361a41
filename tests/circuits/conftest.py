"""Fixtures of the circuit tests: a tiny llama (grouped-query attention: 4 heads, 2 key-value heads) shared by a
module's tests, equal-length prompt pairs, a score metric, and the hand-written reference's values."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxterp import InterpretableModel
from mlxterp.compiler import is_hooked
from tests.models import CharTokenizer, tiny_llama_module

CLEAN = ["hello world", "hi there al"]
CORRUPTED = ["jelly words", "ho where at"]
TARGET, FOIL = 5, 7


def metric(logits: mx.array) -> mx.array:
    """A logit difference of two fixed tokens (the tests' score)."""
    return logits[:, TARGET] - logits[:, FOIL]


@pytest.fixture(scope="module")
def circuit_model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=11), tokenizer=CharTokenizer())


def tokens(model: InterpretableModel, prompts: list) -> mx.array:
    return mx.array([model.encode(p) for p in prompts])


def weights(module: nn.Module) -> dict:
    from mlx.utils import tree_flatten

    return {k: mx.array(v) for k, v in tree_flatten(module.parameters())}


def assert_untouched(model: InterpretableModel, before: dict) -> None:
    """No module hooked, every weight as it was."""
    assert not any(is_hooked(m) for _, m in model.model.named_modules())
    after = weights(model.model)
    assert after.keys() == before.keys()
    assert all(mx.array_equal(after[k], before[k]).item() for k in before)
