"""Sweep shortcuts: whole-layer ("output") variants are born at the next layer's (or the final norm's) input
instead of re-running their own layer, and cells before the first differing token are not run; each rests
on a check made in the trace, and a failed check falls back to running the cells the general way."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlxterp.analysis import sweep
from mlxterp.analysis.patching import _setup

from .conftest import CLEAN, CORRUPTED, reference_grid


def test_every_whole_layer_site_is_born_at_the_next_input(llama_model, gpt2_model):
    for model, norm in ((llama_model, "model.norm"), (gpt2_model, "model.ln_f")):
        s = _setup(model, CLEAN, CORRUPTED, "output", None, "l2")
        births = sweep._next_inputs(model, s.tokens, s.sites, s.norm_path)
        n = len(model.layers)
        assert births == {i: (model._index.layer_path(i + 1) if i + 1 < n else norm) for i in range(n)}
        sub = _setup(model, CLEAN, CORRUPTED, "mlp", None, "l2")
        assert sweep._next_inputs(model, sub.tokens, sub.sites, sub.norm_path) == {}


def test_failed_identity_check_falls_back(llama_model, monkeypatch):
    calls = []

    def never_equal(a, b):
        calls.append(1)
        return mx.array(False)

    monkeypatch.setattr(sweep, "same_values", never_equal)
    llama_model.clear_compile_cache()
    got = llama_model.patching_grid(CLEAN, CORRUPTED, positions=[2, 3, 7], batch_size=5)
    want = reference_grid(llama_model, CLEAN, CORRUPTED, "output", [0, 1, 2, 3], [2, 3, 7])
    np.testing.assert_allclose(got.grid, want, atol=1e-3)
    assert calls  # the check ran (and failed), the chunks were recomputed the general way
    llama_model.clear_compile_cache()


def test_last_layer_output_cells(llama_model):
    grid = llama_model.patching_grid(CLEAN, CORRUPTED, layers=[3]).grid[0]
    np.testing.assert_allclose(grid[:-1], 0.0, atol=1e-9)  # only the last position reaches the logits
    assert abs(grid[-1] - 100.0) < 1e-4


def test_cells_before_the_first_difference_are_not_run(llama_model, monkeypatch):
    ran = []
    original = sweep._chunk_logits

    def spy(model, tokens, sites, chunk, *args, **kwargs):
        ran.extend(chunk)
        return original(model, tokens, sites, chunk, *args, **kwargs)

    monkeypatch.setattr(sweep, "_chunk_logits", spy)
    got = llama_model.patching_grid(CLEAN, CORRUPTED, component="mlp", positions=[0, 2, 3, 7])
    assert sorted({p for _, p in ran}) == [3, 7]  # CLEAN and CORRUPTED first differ at position 3
    assert np.all(got.grid[:, :2] == 0.0)
    want = reference_grid(llama_model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3], [0, 2, 3, 7])
    np.testing.assert_allclose(got.grid, want, atol=1e-3)
    ran.clear()
    only_prefix = llama_model.patching_grid(CLEAN, CORRUPTED, positions=[0, 1, 2])  # nothing to run but d0
    assert ran == [] and np.all(only_prefix.grid == 0.0) and only_prefix.corrupted_distance > 0


def test_failed_prefix_check_runs_the_cells(llama_model, monkeypatch):
    ran = []
    original = sweep._chunk_logits

    def spy(model, tokens, sites, chunk, *args, **kwargs):
        ran.extend(chunk)
        return original(model, tokens, sites, chunk, *args, **kwargs)

    monkeypatch.setattr(sweep, "_chunk_logits", spy)
    monkeypatch.setattr(sweep, "same_prefix", lambda out, mask: mx.array(False))
    llama_model.clear_compile_cache()
    got = llama_model.patching_grid(CLEAN, CORRUPTED, component="mlp", positions=[1, 2, 5], batch_size=3)
    assert sorted(ran) == sorted((layer, p) for layer in range(4) for p in (1, 2, 5))
    want = reference_grid(llama_model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3], [1, 2, 5])
    np.testing.assert_allclose(got.grid, want, atol=1e-3)
    llama_model.clear_compile_cache()
