"""patching_grid (layer x position) against a loop; attribution_patching against it and finite differences."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.analysis.patching import PatchingGrid

from .conftest import (CLEAN, CORRUPTED, STORY_CLEAN, STORY_CORRUPTED, component_name, forward_count,
                       last_logits, np_distance, reference_grid)


@pytest.mark.parametrize("component, layers, positions, batch_size", [
    ("output", None, None, None),
    ("mlp", [1, 3], [2, 3, -1], 4),       # chunks split a layer's cells
    ("self_attn.o_proj", [0, 2], [3, 5], 1),
])
def test_grid_matches_loop(llama_model, component, layers, positions, batch_size):
    got = llama_model.patching_grid(CLEAN, CORRUPTED, component=component, layers=layers, positions=positions,
                                    batch_size=batch_size)
    layer_ids = layers or [0, 1, 2, 3]
    cols = [p % 8 for p in positions] if positions else list(range(8))
    assert isinstance(got, PatchingGrid) and got.layers == layer_ids and got.positions == cols
    want = reference_grid(llama_model, CLEAN, CORRUPTED, component, layer_ids, cols)
    np.testing.assert_allclose(got.grid, want, atol=1e-3)


def test_grid_gpt2_matches_loop(gpt2_model):
    got = gpt2_model.patching_grid(CLEAN, CORRUPTED, component="attn", positions=[3, 7], metric="cosine")
    np.testing.assert_allclose(got.grid, reference_grid(gpt2_model, CLEAN, CORRUPTED, "attn", [0, 1, 2], [3, 7],
                                                        "cosine"), atol=1e-3)


def test_grid_is_batched(llama_model):
    llama_model.patching_grid(CLEAN, CORRUPTED, batch_size=16)
    before = forward_count(llama_model)
    llama_model.patching_grid(CLEAN, CORRUPTED, batch_size=16)
    assert forward_count(llama_model) - before <= 2 + 1  # 32 cells / 16 per forward


def test_grid_structure(llama_model):
    grid = llama_model.patching_grid(CLEAN, CORRUPTED, layers=[0, 3])
    assert grid.grid.shape == (2, 8)
    # positions before the first difference see identical inputs: nothing to recover
    np.testing.assert_allclose(grid.grid[:, :3], 0.0, atol=1e-6)
    # patching the last layer's whole output at the last position restores the clean logits exactly
    assert abs(grid.grid[1, -1] - 100) < 1e-3
    assert grid.position_labels[3] == "13*" and grid.position_labels[0] == "1"
    assert grid.as_dict()[3][7] == grid.grid[1, 7]


@pytest.mark.parametrize("kwargs, match", [
    (dict(positions=[8]), r"positions: position index 8 is out of range: the prompts have 8 tokens \(valid positions 0 to 7"),
    (dict(positions="last"), r"positions: expected None, an int or a list"),
    (dict(component="mlp.w1"), r"component: 'mlp.w1'.*valid components are 'output'"),
])
def test_grid_bad_arguments(llama_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llama_model.patching_grid(CLEAN, CORRUPTED, **kwargs)
    with pytest.raises(ValueError, match=match):
        llama_model.attribution_patching(CLEAN, CORRUPTED, **kwargs)


def test_grid_plot(llama_model, tmp_path):
    pytest.importorskip("matplotlib")
    grid = llama_model.patching_grid(CLEAN, CORRUPTED, positions=[3, 7], plot=True, save_path=tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    fig = grid.plot(tmp_path / "again.png")
    assert fig.axes and (tmp_path / "again.png").exists()


# -- attribution patching --------------------------------------------------------------------------------------
def _finite_difference(model, component, layer, pos, metric, eps=1e-2):
    """Central difference of recovery along (clean - corrupted) at one (layer, position), per unit step."""
    name = component_name(model, layer, component)
    clean_logits, acts = last_logits(model, CLEAN, saves=[name])
    corrupted_logits, corr = last_logits(model, CORRUPTED, saves=[name])
    d0 = np_distance(corrupted_logits, clean_logits, metric)
    delta = acts[name] - corr[name]
    mask = (mx.arange(8) == pos)[None, :, None]

    def recovery(step):
        logits, _ = last_logits(model, CORRUPTED, writes={name: lambda out: out + mx.where(mask, step * delta, 0.0)})
        return (d0 - np_distance(logits, clean_logits, metric)) / d0 * 100

    return (recovery(eps) - recovery(-eps)) / (2 * eps)


@pytest.mark.parametrize("metric", ["l2", "cosine", "mse"])
def test_attribution_equals_finite_difference(llama_model, metric):
    got = llama_model.attribution_patching(CLEAN, CORRUPTED, component="mlp", metric=metric)
    assert got.method == "attribution patching" and got.grid.shape == (4, 8)
    for layer, pos in [(0, 3), (2, 5), (3, 7)]:
        fd = _finite_difference(llama_model, "mlp", layer, pos, metric)
        np.testing.assert_allclose(got.grid[layer, pos], fd, rtol=2e-2, atol=1e-3)


def test_attribution_correlates_with_patching(llama_model, gpt2_model):
    for model in (llama_model, gpt2_model):
        grid = model.patching_grid(CLEAN, CORRUPTED)
        attr = model.attribution_patching(CLEAN, CORRUPTED)
        assert np.corrcoef(grid.grid.ravel(), attr.grid.ravel())[0, 1] > 0.9


@pytest.mark.realmodel
def test_attribution_stories(stories, tmp_path):
    grid = stories.patching_grid(STORY_CLEAN, STORY_CORRUPTED)
    attr = stories.attribution_patching(STORY_CLEAN, STORY_CORRUPTED, save_path=tmp_path / "attr.png")
    assert attr.grid.shape == grid.grid.shape == (5, 14)
    assert np.corrcoef(grid.grid.ravel(), attr.grid.ravel())[0, 1] > 0.8
    assert grid.position_labels[2] == " do*" or grid.position_labels[2].endswith("*")


def test_attribution_cost(llama_model):
    before, traces = forward_count(llama_model), llama_model.compile_stats()["traces"]
    llama_model.attribution_patching(CLEAN, CORRUPTED, layers=[1, 2])
    # one trace records the program (deltas as params); the clean forward, the corrupted forward and its
    # backward then run inside one compiled function, traced once ...
    assert forward_count(llama_model) - before == 1
    assert llama_model.compile_stats()["traces"] - traces == 1
    before, traces = forward_count(llama_model), llama_model.compile_stats()["traces"]
    llama_model.attribution_patching(CORRUPTED, CLEAN, layers=[1, 2])
    # ... which later calls (new prompts) run without recording or retracing
    assert forward_count(llama_model) - before == 0
    assert llama_model.compile_stats()["traces"] - traces == 0