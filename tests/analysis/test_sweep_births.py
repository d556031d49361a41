"""Sweep shortcuts: whole-layer ("output") variants are born at the next layer's (or the final norm's) input
instead of re-running their own layer, so are the variants of a component added last into the residual
stream (the MLP: ``out = (x + attn) + mlp``), and cells before the first differing token are not run; each
rests on a check made in the trace, and a failed check falls back to running the cells the general way."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import llama

from mlxterp import InterpretableModel
from mlxterp.analysis import sweep
from mlxterp.analysis.patching import _setup

from .conftest import CLEAN, CORRUPTED, make_llama, reference_grid, reference_patching


def births_of(model, component, layers=None):
    s = _setup(model, CLEAN, CORRUPTED, component, layers, "l2")
    return sweep._births(model, s.tokens, s.sites, s.norm_path)


def test_every_whole_layer_site_is_born_at_the_next_input(llama_model, gpt2_model):
    for model, norm in ((llama_model, "model.norm"), (gpt2_model, "model.ln_f")):
        n = len(model.layers)
        nxt = [model._index.layer_path(i + 1) for i in range(n - 1)] + [norm]
        assert births_of(model, "output") == {i: sweep.Birth(nxt[i]) for i in range(n)}


def test_residual_stream_components_are_born_at_the_next_input(llama_model, gpt2_model):
    """The MLP (and its last projection, which returns the MLP's output) is the last addend of llama's and
    GPT-2's residual stream; the attention is not (the MLP reads it), nor are other sub-modules."""
    for model, attn, components in ((llama_model, "self_attn", ("mlp", "mlp.down_proj")),
                                    (gpt2_model, "attn", ("mlp", "mlp.c_proj"))):
        n = len(model.layers)
        nxt = [model._index.layer_path(i + 1) for i in range(n - 1)] + [
            "model.norm" if model is llama_model else "model.ln_f"]
        for component in components:
            assert births_of(model, component) == {
                i: sweep.Birth(nxt[i], f"{model._index.layer_path(i)}.{attn}", cut=i == n - 1) for i in range(n)}
        for component in ("attn", "mlp.c_fc" if model is gpt2_model else "mlp.gate_proj"):
            assert births_of(model, component) == {}


def spy_chunks(monkeypatch):
    """Record every chunk's births (``{layer: Birth}``, as run) and cells."""
    runs = []
    original = sweep._chunk_distances

    def spy(model, tokens, sites, chunk, metric, norm_path, births, *args, **kwargs):
        runs.append((dict(births), list(chunk)))
        return original(model, tokens, sites, chunk, metric, norm_path, births, *args, **kwargs)

    monkeypatch.setattr(sweep, "_chunk_distances", spy)
    return runs


@pytest.mark.parametrize("component", ["mlp", "mlp.down_proj"])
def test_mlp_shortcut_is_taken_on_llama(llama_model, monkeypatch, component):
    runs = spy_chunks(monkeypatch)
    got = llama_model.activation_patching(CLEAN, CORRUPTED, component=component)
    assert len(runs) == 1 and len(runs[0][0]) == 4  # every layer born at the next input; no check failed
    want = reference_patching(llama_model, CLEAN, CORRUPTED, component, [0, 1, 2, 3])
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-3)


def test_mlp_shortcut_is_taken_on_gpt2_and_in_grids(gpt2_model, monkeypatch):
    runs = spy_chunks(monkeypatch)
    got = gpt2_model.activation_patching(CLEAN, CORRUPTED, component="mlp")
    assert len(runs) == 1 and sorted(runs[0][0]) == [0, 1, 2]
    want = reference_patching(gpt2_model, CLEAN, CORRUPTED, "mlp", [0, 1, 2])
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-3)
    runs.clear()
    grid = gpt2_model.patching_grid(CLEAN, CORRUPTED, component="mlp", positions=[3, 5, 7], batch_size=4)
    assert len(runs) == 3 and all(sorted(b) == [0, 1, 2] for b, _ in runs)  # 9 cells in chunks of 4, no rerun
    want = reference_grid(gpt2_model, CLEAN, CORRUPTED, "mlp", [0, 1, 2], [3, 5, 7])
    np.testing.assert_allclose(grid.grid, want, atol=1e-3)


class PostNormBlock(llama.TransformerBlock):
    """A llama layer whose output is ``norm(h + mlp(...))`` (a norm outside any module): the MLP is not the
    last addend of the residual stream, which only the numeric check can tell."""

    def __call__(self, x, mask=None, cache=None):
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        out = h + self.mlp(self.post_attention_layernorm(h))
        return mx.fast.rms_norm(out, self.post_attention_layernorm.weight, 1e-5)


class PostNormModuleBlock(llama.TransformerBlock):
    """A Gemma-like layer: a norm module after the MLP (``h + norm(mlp(...))``), seen in the probe."""

    def __init__(self, args):
        super().__init__(args)
        self.post_feedforward_layernorm = llama.nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x, mask=None, cache=None):
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.post_feedforward_layernorm(self.mlp(self.post_attention_layernorm(h)))


def post_norm_model(block, layers=(1, 3), seed=21) -> InterpretableModel:
    module = make_llama(seed=seed)
    for i in layers:
        old = module.model.layers[i]
        new = block(module.args)
        new.update(old.parameters(), strict=False)
        module.model.layers[i] = new
    mx.eval(module.parameters())
    return InterpretableModel(module)


def test_mlp_shortcut_falls_back_where_the_identity_fails(monkeypatch):
    model = post_norm_model(PostNormBlock)
    assert sorted(births_of(model, "mlp")) == [0, 1, 2, 3]  # the probe cannot tell ...
    runs = spy_chunks(monkeypatch)
    got = model.activation_patching(CLEAN, CORRUPTED, component="mlp")
    assert len(runs) == 2 and sorted(runs[0][0]) == [0, 1, 2, 3]
    assert sorted(runs[1][0]) == [0, 2]  # ... the check can: layers 1 and 3 ran again the general way
    want = reference_patching(model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3])
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-3)
    runs.clear()
    grid = model.patching_grid(CLEAN, CORRUPTED, component="mlp", positions=[2, 3, 7], batch_size=4)
    want = reference_grid(model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3], [2, 3, 7])
    np.testing.assert_allclose(grid.grid, want, atol=1e-3)
    # 8 cells run (position 2 precedes the first difference) in 2 chunks of 4 (layers 0-1, then 2-3), each run
    # again once without the layer that failed its check; a layer that failed is not tried again
    assert [sorted(b) for b, _ in runs] == [[0, 1, 2, 3], [0, 2, 3], [0, 2, 3], [0, 2]]
    whole = model.activation_patching(CLEAN, CORRUPTED, component="output")  # the layer's own output is fine
    np.testing.assert_allclose(list(whole.values()), 100.0, atol=1e-3)


def test_mlp_followed_by_a_norm_module_is_not_tried(monkeypatch):
    model = post_norm_model(PostNormModuleBlock, layers=(0, 1, 2, 3))
    assert births_of(model, "mlp") == {}
    runs = spy_chunks(monkeypatch)
    got = model.activation_patching(CLEAN, CORRUPTED, component="mlp")
    assert len(runs) == 1
    want = reference_patching(model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3])
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-3)


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


def record_chunks(monkeypatch) -> list:
    """A list that collects the cells of every chunk the sweep runs."""
    ran = []
    original = sweep._chunk_distances

    def spy(model, tokens, sites, chunk, *args, **kwargs):
        ran.extend(chunk)
        return original(model, tokens, sites, chunk, *args, **kwargs)

    monkeypatch.setattr(sweep, "_chunk_distances", spy)
    return ran


def test_cells_before_the_first_difference_are_not_run(llama_model, monkeypatch):
    ran = record_chunks(monkeypatch)
    got = llama_model.patching_grid(CLEAN, CORRUPTED, component="mlp", positions=[0, 2, 3, 7])
    assert sorted({p for _, p in ran}) == [3, 7]  # CLEAN and CORRUPTED first differ at position 3
    assert np.all(got.grid[:, :2] == 0.0)
    want = reference_grid(llama_model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3], [0, 2, 3, 7])
    np.testing.assert_allclose(got.grid, want, atol=1e-3)
    ran.clear()
    only_prefix = llama_model.patching_grid(CLEAN, CORRUPTED, positions=[0, 1, 2])  # nothing to run but d0
    assert ran == [] and np.all(only_prefix.grid == 0.0) and only_prefix.corrupted_distance > 0


def test_failed_prefix_check_runs_the_cells(llama_model, monkeypatch):
    ran = record_chunks(monkeypatch)
    monkeypatch.setattr(sweep, "same_prefix", lambda out, mask: mx.array(False))
    llama_model.clear_compile_cache()
    got = llama_model.patching_grid(CLEAN, CORRUPTED, component="mlp", positions=[1, 2, 5], batch_size=3)
    assert sorted(ran) == sorted((layer, p) for layer in range(4) for p in (1, 2, 5))
    want = reference_grid(llama_model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3], [1, 2, 5])
    np.testing.assert_allclose(got.grid, want, atol=1e-3)
    llama_model.clear_compile_cache()


OTHER_CLEAN = [2, 6, 10, 14, 18, 22, 26, 30]
OTHER_CORRUPTED = [2, 6, 10, 14, 50, 22, 26, 30]


def test_sweep_programs_are_reused_and_follow_prompts_and_weights():
    """Each chunk structure is one program of the tokens and masks, cached on the model: recorded (and run)
    by the first sweep, compiled by the second, replayed as is from then on."""
    model = InterpretableModel(make_llama(seed=31))
    first = model.activation_patching(CLEAN, CORRUPTED, component="mlp")
    programs = model._program_cache("sweep")
    assert len(programs) == 1 and next(iter(programs.values())) is not None
    stats = model.compile_stats()
    second = model.activation_patching(OTHER_CLEAN, OTHER_CORRUPTED, component="mlp")
    after = model.compile_stats()
    assert len(programs) == 1  # same structure, new prompts: the same program, nothing recorded ...
    assert (after["eager_runs"], after["compiled_runs"], after["traces"]) == (
        stats["eager_runs"], stats["compiled_runs"], stats["traces"] + 1)  # ... compiled once
    model.activation_patching(CLEAN, CORRUPTED, component="mlp")
    assert model.compile_stats() == after  # and from then on replayed
    for got, (clean, corrupted) in ((first, (CLEAN, CORRUPTED)), (second, (OTHER_CLEAN, OTHER_CORRUPTED))):
        want = reference_patching(model, clean, corrupted, "mlp", [0, 1, 2, 3])
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-3)
    layer = model.model.model.layers[1].mlp.down_proj
    layer.weight = layer.weight * 3.0
    edited = model.activation_patching(CLEAN, CORRUPTED, component="mlp")
    assert len(programs) == 1 and not np.allclose(list(edited.values()), list(first.values()))
    want = reference_patching(model, CLEAN, CORRUPTED, "mlp", [0, 1, 2, 3])
    np.testing.assert_allclose([edited[k] for k in want], list(want.values()), atol=1e-3)
    model.clear_compile_cache()
    assert len(programs) == 0
