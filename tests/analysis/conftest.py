"""Fixtures for the analysis tests: tiny in-memory models (module scope) and stories260K when present."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from tests.models import STORIES, tiny_gpt2_module, tiny_llama_module


# Equal-length token prompts that differ at position 3.
CLEAN = [1, 5, 9, 13, 17, 21, 25, 3]
CORRUPTED = [1, 5, 9, 40, 17, 21, 25, 3]
STORY_CLEAN = "The cat sat on the mat. The cat"
STORY_CORRUPTED = "The dog sat on the mat. The dog"


def make_llama(tied: bool = False, layers: int = 4, hidden: int = 64, vocab: int = 128, seed: int = 0) -> nn.Module:
    return tiny_llama_module(seed=seed, layers=layers, hidden=hidden, vocab=vocab, tied=tied)


def make_gpt2(layers: int = 3, seed: int = 1) -> nn.Module:
    return tiny_gpt2_module(seed=seed, layers=layers)


def quantized(module: nn.Module) -> nn.Module:
    nn.quantize(module, group_size=32, bits=4)
    mx.eval(module.parameters())
    return module


@pytest.fixture(scope="module")
def llama_model() -> InterpretableModel:
    return InterpretableModel(make_llama(tied=False))


@pytest.fixture(scope="module")
def llama_tied() -> InterpretableModel:
    return InterpretableModel(make_llama(tied=True, seed=3))


@pytest.fixture(scope="module")
def gpt2_model() -> InterpretableModel:
    return InterpretableModel(make_gpt2(), layer_attr="h")


@pytest.fixture(scope="module", params=["tied", "untied"])
def quantized_llama(request) -> InterpretableModel:
    return InterpretableModel(quantized(make_llama(tied=request.param == "tied", seed=5)))


@pytest.fixture(scope="module")
def stories() -> InterpretableModel:
    if not (STORIES / "model.safetensors").exists():
        pytest.skip(f"stories260K is not available at {STORIES.resolve()} (a sibling 'shared' checkout is needed)")
    return InterpretableModel(str(STORIES))


def value(handle: Any) -> mx.array:
    """The array behind a saved handle (rebound or not)."""
    return handle if isinstance(handle, mx.array) else handle.value


def np_distance(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    """Reference distances in float64 numpy."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if metric == "l2":
        return float(np.linalg.norm(a - b))
    if metric == "mse":
        return float(np.mean((a - b) ** 2))
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def component_name(model: InterpretableModel, layer: int, component: str) -> str:
    base = f"{model.layer_attr}.{layer}"
    return base if component == "output" else f"{base}.{component}"


def last_logits(model: InterpretableModel, tokens: Any, writes: Optional[Dict[str, Any]] = None,
                saves: List[str] = ()) -> tuple:
    """One plain eager trace: last-position logits (numpy) and the saved module outputs."""
    with model.trace(tokens, compile=False, capture="saved"):
        for name, fn in (writes or {}).items():
            module = model.module(name)
            module.output = fn(module.output)
        handles = {name: model.module(name).output.save() for name in saves}
        logits = model.output[:, -1, :].save()
    return np.array(value(logits)[0].astype(mx.float32)), {k: value(v) for k, v in handles.items()}


def reference_patching(model: InterpretableModel, clean: Any, corrupted: Any, component: str,
                       layers: List[int], metric: str = "l2") -> Dict[int, float]:
    """activation_patching as a plain loop of separate traces: clean, corrupted, one patched run per layer."""
    names = {layer: component_name(model, layer, component) for layer in layers}
    clean_logits, clean_acts = last_logits(model, clean, saves=list(names.values()))
    corrupted_logits, _ = last_logits(model, corrupted)
    d0 = np_distance(corrupted_logits, clean_logits, metric)
    out = {}
    for layer, name in names.items():
        patched, _ = last_logits(model, corrupted, writes={name: lambda _, a=clean_acts[name]: a})
        out[layer] = (d0 - np_distance(patched, clean_logits, metric)) / d0 * 100
    return out


def reference_grid(model: InterpretableModel, clean: Any, corrupted: Any, component: str, layers: List[int],
                   positions: List[int], metric: str = "l2") -> np.ndarray:
    """patching_grid as a loop: one trace per (layer, position), writing one position of the component."""
    names = {layer: component_name(model, layer, component) for layer in layers}
    clean_logits, clean_acts = last_logits(model, clean, saves=list(names.values()))
    corrupted_logits, _ = last_logits(model, corrupted)
    d0 = np_distance(corrupted_logits, clean_logits, metric)
    grid = np.zeros((len(layers), len(positions)))
    for i, layer in enumerate(layers):
        name = names[layer]
        for j, pos in enumerate(positions):
            def write(out, a=clean_acts[name], p=pos):
                out[:, p] = a[:, p]
                return out
            patched, _ = last_logits(model, corrupted, writes={name: write})
            grid[i, j] = (d0 - np_distance(patched, clean_logits, metric)) / d0 * 100
    return grid


def forward_count(model: InterpretableModel) -> int:
    stats = model.compile_stats()
    return stats["eager_runs"] + stats["compiled_runs"]
