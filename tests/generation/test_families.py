"""Other model families and caches: the compiled path where the static cache serves, mlx-lm's otherwise."""

from __future__ import annotations

import pytest
from mlx_lm.models.cache import RotatingKVCache

from mlxterp import InterpretableModel
from tests.generation.reference import mlx_lm_tokens
from tests.models import CharTokenizer, tiny_gpt2_module, tiny_llama_module, tiny_qwen2_module

FAMILIES = {
    "gpt2": (lambda: tiny_gpt2_module(), "h"),
    "qwen2": (lambda: tiny_qwen2_module(), "layers"),
    "llama-4bit": (lambda: tiny_llama_module(quantize=True), "layers"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("compile", ["auto", False])
def test_greedy_equals_mlx_lm_across_families(family, compile):
    build, layer_attr = FAMILIES[family]
    model = InterpretableModel(build(), tokenizer=CharTokenizer(), layer_attr=layer_attr)
    gen = model.generate("hello", 10, ignore_eos=True, compile=compile)
    assert gen.tokens == mlx_lm_tokens(model.model, model.encode("hello"), 10)
    assert gen.mode == ("compiled" if compile == "auto" else "eager")


class RotatingLlama(type(tiny_llama_module())):
    """A llama whose mlx-lm cache is a sliding window: the static cache cannot stand in for it."""

    def make_cache(self):
        return [RotatingKVCache(max_size=64) for _ in self.layers]


def test_a_cache_the_static_path_does_not_serve_runs_eagerly():
    module = tiny_llama_module()
    module.__class__ = RotatingLlama
    model = InterpretableModel(module, tokenizer=CharTokenizer())
    gen = model.generate("hello", 6, ignore_eos=True)
    assert gen.mode == "eager"
    assert gen.tokens == mlx_lm_tokens(module, model.encode("hello"), 6)
    with pytest.raises(ValueError, match="cannot run compiled.*KVCache"):
        model.generate("hello", 6, compile=True).tokens
    with pytest.raises(ValueError, match="different lengths.*RotatingKVCache"):
        model.generate(["hi", "hello"], 3).tokens


def test_generation_past_learned_positions_is_refused_before_running():
    model = InterpretableModel(tiny_gpt2_module(), tokenizer=CharTokenizer(), layer_attr="h")
    with pytest.raises(ValueError, match="learned position embeddings for 64 positions"):
        model.generate("hello", 60)
    assert len(model.generate("hello", 59, ignore_eos=True).tokens) == 59  # 6 + 59 - 1 = 64 positions
