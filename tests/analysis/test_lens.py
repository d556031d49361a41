"""get_token_predictions, the unembedding discovery and the logit lens."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp.analysis.unembed import find_unembedding

from .conftest import CLEAN, STORY_CLEAN, forward_count, value


def _model_logits(model, tokens) -> np.ndarray:
    with model.trace(tokens, compile=False, capture="saved"):
        out = model.output.save()
    return np.array(value(out)[0].astype(mx.float32))


def _head_weight(model) -> mx.array:
    """Dequantized vocabulary matrix (test-side reference only)."""
    head = find_unembedding(model)
    module = model._index.modules[head.head_path]
    if isinstance(module, (nn.QuantizedEmbedding, nn.QuantizedLinear)):
        return mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits)
    return module.weight


# -- unembedding discovery ------------------------------------------------------------------------
def test_unembedding_finds_head_and_norm(llama_model, llama_tied, gpt2_model):
    untied, tied, g = (find_unembedding(m) for m in (llama_model, llama_tied, gpt2_model))
    assert (untied.head_path, untied.tied, untied.norm_path) == ("lm_head", False, "model.norm")
    assert (tied.head_path, tied.tied) == ("model.embed_tokens", True)
    assert (g.head_path, g.tied, g.norm_path) == ("model.wte", True, "model.ln_f")
    assert untied.hidden_size == tied.hidden_size == g.hidden_size == 64


# -- get_token_predictions ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama_model", "llama_tied", "gpt2_model"])
def test_predictions_use_output_projection_without_norm(name, request):
    model = request.getfixturevalue(name)
    h = mx.random.normal((64,), key=mx.random.key(7))
    ref = np.array(h @ _head_weight(model).T)  # tied models: the embedding transposed
    ids = model.get_token_predictions(h, top_k=5)
    assert ids == list(np.argsort(-ref)[:5])
    scored = model.get_token_predictions(h, top_k=5, return_scores=True)
    assert [i for i, _ in scored] == ids
    np.testing.assert_allclose([s for _, s in scored], ref[ids], rtol=1e-5, atol=1e-5)


def test_predictions_batch_returns_list_per_row(llama_model):
    h = mx.random.normal((3, 64), key=mx.random.key(1))
    rows = llama_model.get_token_predictions(h, top_k=4, return_scores=True)
    assert len(rows) == 3 and all(len(r) == 4 for r in rows)
    for r, hr in zip(rows, h):
        assert [i for i, _ in r] == llama_model.get_token_predictions(hr, top_k=4)
        assert all(a[1] >= b[1] for a, b in zip(r, r[1:]))


def test_predictions_quantized(quantized_llama):
    model = quantized_llama
    h = mx.random.normal((2, 64), key=mx.random.key(2))
    ref = np.array(h @ _head_weight(model).T)
    rows = model.get_token_predictions(h, top_k=3, return_scores=True)
    for row, r in zip(rows, ref):
        assert [i for i, _ in row] == list(np.argsort(-r)[:3])
        np.testing.assert_allclose([s for _, s in row], r[[i for i, _ in row]], rtol=1e-4, atol=1e-4)


def test_predictions_seed_example(stories):
    # The seed reads trace.activations inside the block; the core fills it on exit (reported), so read after.
    with stories.trace("Once upon a time") as trace:
        pass
    layer = trace.activations["model.model.layers.4"]
    preds = stories.get_token_predictions(layer[0, -1, :], top_k=5, return_scores=True)
    assert len(preds) == 5 and all(isinstance(stories.token_to_str(t), str) for t, _ in preds)


@pytest.mark.parametrize("bad, match", [(mx.zeros((3, 2, 64)), "shape"), (mx.zeros((32,)), r"\(64,\)"),
                                        (mx.zeros((64,), dtype=mx.int32), "float")])
def test_predictions_bad_hidden(llama_model, bad, match):
    with pytest.raises(ValueError, match="hidden_state"):
        llama_model.get_token_predictions(bad)
    with pytest.raises(ValueError, match=match):
        llama_model.get_token_predictions(bad)


@pytest.mark.parametrize("top_k", [0, -1, 129, 2.5, True])
def test_predictions_bad_top_k(llama_model, top_k):
    with pytest.raises(ValueError, match="top_k"):
        llama_model.get_token_predictions(mx.zeros((64,)), top_k=top_k)


# -- logit lens ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama_model", "llama_tied", "gpt2_model"])
def test_lens_last_layer_is_model_prediction(name, request):
    _check_last_layer(request.getfixturevalue(name))


def test_lens_quantized(quantized_llama):
    _check_last_layer(quantized_llama)


def _check_last_layer(model):
    results = model.logit_lens(CLEAN, top_k=3)
    assert sorted(results) == list(range(len(model.layers)))
    last = results[len(model.layers) - 1]
    assert [pos[0][0] for pos in last] == list(np.argmax(_model_logits(model, CLEAN), axis=-1))
    for pos in last:
        probs = [p for _, p, _ in pos]
        assert len(pos) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5


def test_lens_last_layer_stories(stories):
    results = stories.logit_lens(STORY_CLEAN)
    expected = np.argmax(_model_logits(stories, STORY_CLEAN), axis=-1)
    assert [pos[0][0] for pos in results[4]] == list(expected)
    assert all(pos[0][2] == stories.token_to_str(pos[0][0]) for pos in results[4])
    assert len(results[0]) == len(stories.encode(STORY_CLEAN))


def test_lens_matches_manual_projection(llama_model):
    with llama_model.trace(CLEAN, compile=False, capture="saved"):
        h = llama_model.layers[1].output.save()
    inner = llama_model.model.model
    probs = np.array(mx.softmax(llama_model.model.lm_head(inner.norm(value(h)[0])), axis=-1))
    results = llama_model.logit_lens(CLEAN, top_k=2, layers=[1])
    assert list(results) == [1]
    for pos, entries in enumerate(results[1]):
        order = np.argsort(-probs[pos])[:2]
        assert [e[0] for e in entries] == list(order)
        np.testing.assert_allclose([e[1] for e in entries], probs[pos][order], rtol=1e-5)


def test_lens_is_one_forward_and_layers_subset(llama_model):
    before = forward_count(llama_model)
    results = llama_model.logit_lens(CLEAN, layers=[-1, 0])
    assert forward_count(llama_model) - before == 1
    assert list(results) == [0, 3]


@pytest.mark.parametrize("layers", [[4], [-5], [0, "1"], [1.0], "all", []])
def test_lens_bad_layers(llama_model, layers):
    with pytest.raises(ValueError, match=r"layers: .*0 to 3"):
        llama_model.logit_lens(CLEAN, layers=layers)


def test_lens_bad_top_k(llama_model):
    with pytest.raises(ValueError, match="top_k"):
        llama_model.logit_lens(CLEAN, top_k=0)
    with pytest.raises(ValueError, match="vocabulary size 128"):
        llama_model.logit_lens(CLEAN, top_k=500)


def test_lens_plot_saves_png(llama_model, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "lens.png"
    results = llama_model.logit_lens(CLEAN, plot=True, save_path=path, max_display_tokens=4)
    assert path.read_bytes().startswith(b"\x89PNG") and len(results) == 4


def test_predictions_accept_saved_handle(llama_model):
    with llama_model.trace(CLEAN, capture="saved"):
        handles = [llama_model.layers[2].output.save()]  # in a list: stays a bound proxy
    hidden = value(handles[0])[0, -1]
    assert llama_model.get_token_predictions(handles[0][0, -1], top_k=3) == \
        llama_model.get_token_predictions(hidden, top_k=3)
