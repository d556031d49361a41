"""attribution_patching's compiled program: it follows new prompts and weight edits, against the same
estimate computed with mx.value_and_grad through a forward written by hand (tests/reference.py)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.analysis import attribution
from mlxterp.analysis.metrics import distance
from tests.reference import llama_forward

from .conftest import CLEAN, CORRUPTED, make_llama

OTHER_CLEAN = [2, 6, 10, 14, 18, 22, 26, 30]
OTHER_CORRUPTED = [2, 6, 10, 14, 50, 22, 26, 30]


def eager_grid(model, clean, corrupted, component="output", metric="l2"):
    """The linear estimate, ``-100 / d(corrupted) * sum_h delta * grad`` per (layer, position), from the
    hand-written forward: clean activations, and the corrupted run's activations and gradients with respect
    to additive deltas on the component."""
    kind = {"output": "layer", "mlp": "mlp"}[component]
    clean_acts = {}

    def keep(site, x):
        if site[0] == kind:
            clean_acts[site[1]] = x
        return x

    clean_logits = llama_forward(model.model, mx.array([clean]), keep)[:, -1]

    def objective(deltas):
        acts = {}

        def add(site, x):
            if site[0] != kind:
                return x
            acts[site[1]] = x
            return x + deltas[site[1]]

        logits = llama_forward(model.model, mx.array([corrupted]), add)[:, -1]
        return distance(logits, clean_logits, metric)[0], [acts[i] for i in range(len(deltas))]

    zeros = [mx.zeros_like(clean_acts[i]) for i in range(len(clean_acts))]
    (d0, acts), grads = mx.value_and_grad(objective)(zeros)
    grid = mx.stack([((clean_acts[i] - acts[i]) * grads[i]).sum(axis=-1)[0] for i in range(len(acts))])
    return np.array(grid, dtype=np.float64) * (-100.0 / d0.item())


def test_program_is_compiled_once_and_follows_new_prompts():
    model = InterpretableModel(make_llama(seed=11))
    first = model.attribution_patching(CLEAN, CORRUPTED, component="mlp")
    second = model.attribution_patching(OTHER_CLEAN, OTHER_CORRUPTED, component="mlp")
    programs = model._program_cache("attribution")
    assert len(programs) == 1 and next(iter(programs.values())) is not None
    np.testing.assert_allclose(first.grid, eager_grid(model, CLEAN, CORRUPTED, "mlp"), atol=1e-4)
    np.testing.assert_allclose(second.grid, eager_grid(model, OTHER_CLEAN, OTHER_CORRUPTED, "mlp"), atol=1e-4)
    assert not np.allclose(first.grid, second.grid)


def test_program_sees_weight_edits():
    model = InterpretableModel(make_llama(seed=12))
    before = model.attribution_patching(CLEAN, CORRUPTED).grid
    layer = model.model.model.layers[2].mlp.down_proj
    layer.weight = layer.weight * 3.0
    after = model.attribution_patching(CLEAN, CORRUPTED).grid
    assert len(model._program_cache("attribution")) == 1
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, eager_grid(model, CLEAN, CORRUPTED), atol=1e-4)


def test_failed_compile_restores_the_weights(monkeypatch):
    model = InterpretableModel(make_llama(seed=14))
    weights = dict(model.model.parameters()["model"]["layers"][0]["mlp"])

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(attribution, "distance", boom)
    with pytest.raises(RuntimeError, match="boom"):
        model.attribution_patching(CLEAN, CORRUPTED)
    restored = model.model.parameters()["model"]["layers"][0]["mlp"]
    for name, sub in weights.items():
        assert restored[name]["weight"] is sub["weight"]
    monkeypatch.undo()
    mx.eval(model.model(mx.array([CLEAN])))  # the model still runs on real weights
    got = model.attribution_patching(CLEAN, CORRUPTED)  # and the program traces afresh
    np.testing.assert_allclose(got.grid, eager_grid(model, CLEAN, CORRUPTED), atol=1e-4)


def test_clear_compile_cache_drops_attribution_programs_and_stats_count_them():
    model = InterpretableModel(make_llama(seed=15))
    model.attribution_patching(CLEAN, CORRUPTED)
    assert model.compile_stats()["analysis_programs"] == 1
    model.clear_compile_cache()
    assert model.compile_stats()["analysis_programs"] == 0
