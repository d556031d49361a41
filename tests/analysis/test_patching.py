"""activation_patching: equal to a loop of separate traces, batched, validated."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.compiler import is_hooked
from mlxterp.analysis import sweep

from .conftest import CLEAN, CORRUPTED, STORY_CLEAN, STORY_CORRUPTED, forward_count, reference_patching

LLAMA_COMPONENTS = ["mlp", "self_attn", "attn", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "output"]


def _close(got, want, tol=1e-3):
    assert list(got) == list(want)
    np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=0, atol=tol)


@pytest.mark.parametrize("component", LLAMA_COMPONENTS)
def test_llama_matches_loop(llama_model, component):
    got = llama_model.activation_patching(CLEAN, CORRUPTED, component=component)
    _close(got, reference_patching(llama_model, CLEAN, CORRUPTED, component.replace("attn", "self_attn")
                                   .replace("self_self_attn", "self_attn"), list(range(4))))


@pytest.mark.parametrize("metric", ["cosine", "mse"])
def test_llama_metrics_match_loop(llama_model, metric):
    got = llama_model.activation_patching(CLEAN, CORRUPTED, component="mlp", layers=[0, 2], metric=metric)
    _close(got, reference_patching(llama_model, CLEAN, CORRUPTED, "mlp", [0, 2], metric))


@pytest.mark.parametrize("component", ["attn", "mlp", "mlp.c_fc", "attn.c_proj", "output"])
def test_gpt2_matches_loop(gpt2_model, component):
    got = gpt2_model.activation_patching(CLEAN, CORRUPTED, component=component, batch_size=2)
    _close(got, reference_patching(gpt2_model, CLEAN, CORRUPTED, component, [0, 1, 2]))


@pytest.mark.realmodel
@pytest.mark.parametrize("component", ["mlp", "self_attn", "output"])
def test_stories_matches_loop(stories, component):
    got = stories.activation_patching(STORY_CLEAN, STORY_CORRUPTED, component=component)
    _close(got, reference_patching(stories, STORY_CLEAN, STORY_CORRUPTED, component, list(range(5))))


def test_quantized_model_runs(quantized_llama):
    got = quantized_llama.activation_patching(CLEAN, CORRUPTED, layers=[1, 3])
    _close(got, reference_patching(quantized_llama, CLEAN, CORRUPTED, "mlp", [1, 3]))


def test_whole_layer_output_fully_recovers(llama_model):
    got = llama_model.activation_patching(CLEAN, CORRUPTED, component="output")
    np.testing.assert_allclose(list(got.values()), 100.0, atol=1e-3)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batched_forwards_are_bounded(llama_model, batch_size, monkeypatch):
    for _ in range(2):  # the first sweep records each chunk's program (run eagerly), the second compiles it
        llama_model.activation_patching(CLEAN, CORRUPTED, batch_size=batch_size)
    before, traces = forward_count(llama_model), llama_model.compile_stats()["traces"]
    programs = dict(llama_model._program_cache("sweep"))
    chunks = []
    original = sweep._chunk_distances
    monkeypatch.setattr(sweep, "_chunk_distances", lambda *a, **k: chunks.append(1) or original(*a, **k))
    got = llama_model.activation_patching(CLEAN, CORRUPTED, batch_size=batch_size)
    assert len(chunks) == math.ceil(4 / batch_size)  # one batched forward per chunk
    # repeated sweep: its compiled programs are reused, nothing is traced
    assert forward_count(llama_model) == before and llama_model.compile_stats()["traces"] == traces
    assert dict(llama_model._program_cache("sweep")) == programs
    _close(got, llama_model.activation_patching(CLEAN, CORRUPTED))


def test_model_is_unchanged(llama_model):
    tokens = mx.array([CLEAN])
    before = np.array(llama_model.model(tokens))
    llama_model.activation_patching(CLEAN, CORRUPTED, component="self_attn.v_proj")
    assert not any(is_hooked(m) for _, m in llama_model.named_modules())
    np.testing.assert_array_equal(np.array(llama_model.model(tokens)), before)


def test_different_lengths(llama_model):
    with pytest.raises(ValueError, match=r"same number of tokens.*8 tokens.*7 tokens"):
        llama_model.activation_patching(CLEAN, CORRUPTED[:-1])


def test_different_lengths_text(stories):
    with pytest.raises(ValueError, match=r"clean_text has 14 tokens.*corrupted_text has 15 tokens"):
        stories.activation_patching(STORY_CLEAN, "The cat sat on the mat. The big dog")


def test_identical_prompts(llama_model):
    with pytest.raises(ValueError, match="distance 0"):
        llama_model.activation_patching(CLEAN, CLEAN)


def test_bad_component_lists_choices(llama_model, gpt2_model):
    with pytest.raises(ValueError, match=r"component: 'ffn'.*'mlp.gate_proj'.*'self_attn.q_proj'"):
        llama_model.activation_patching(CLEAN, CORRUPTED, component="ffn")
    with pytest.raises(ValueError, match=r"component: 'mlp.gate_proj'.*'attn.c_attn'.*'mlp.c_fc'"):
        gpt2_model.activation_patching(CLEAN, CORRUPTED, component="mlp.gate_proj")
    with pytest.raises(ValueError, match=r"runs 2 times"):
        llama_model.activation_patching(CLEAN, CORRUPTED, component="self_attn.rope")
    with pytest.raises(ValueError, match=r"component: expected"):
        llama_model.activation_patching(CLEAN, CORRUPTED, component=3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(metric="kl"), r"metric: expected one of 'l2', 'cosine', 'mse'"),
    (dict(layers=[0, 7]), r"layers: layer index 7 is out of range: the model has 4 layers \(valid indices 0 to 3"),
    (dict(layers=["0"]), r"layers: layer '0' is not an int \(str\); the model has 4 layers \(valid indices 0 to 3"),
    (dict(batch_size=0), r"batch_size: expected a positive int"),
])
def test_bad_arguments(llama_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llama_model.activation_patching(CLEAN, CORRUPTED, **kwargs)


def test_plot_saves_png(llama_model, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bars.png"
    got = llama_model.activation_patching(CLEAN, CORRUPTED, plot=True, save_path=path, progress=True)
    assert path.read_bytes().startswith(b"\x89PNG") and len(got) == 4


def test_layers_negative_and_unsorted(llama_model):
    got = llama_model.activation_patching(CLEAN, CORRUPTED, layers=[-1, 1])
    _close(got, reference_patching(llama_model, CLEAN, CORRUPTED, "mlp", [1, 3]))


@pytest.mark.parametrize("clean, match", [(3.5, r"clean_text: inputs has type float"),
                                          (["a", "b"], r"clean_text: expected a single prompt"),
                                          ([[1, 2], [3, 4]], r"clean_text: expected a single prompt")])
def test_bad_prompts(llama_model, clean, match):
    with pytest.raises(ValueError, match=match):
        llama_model.activation_patching(clean, CORRUPTED)
