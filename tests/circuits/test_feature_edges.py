"""Edges between feature nodes against hand computations: each edge equals the downstream node's gradient
through the hand-written spliced forward, pulled back by hand (``mx.vjp``) to the upstream dictionary's parts and
multiplied by their change (patching) or their negation (ablation); an upstream node after the downstream node's
position scores exactly 0; bad input refused before any work."""

from __future__ import annotations

import importlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel
from tests.circuits.test_feature_circuits import hand_gradients, hand_parts, hand_run, ids
from tests.features.helpers import dictionary
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import dequantized, llama_forward


@pytest.fixture(scope="module")
def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=2, layers=3, hidden=32), tokenizer=CharTokenizer())


@pytest.fixture(scope="module")
def dictionaries() -> list:
    """An SAE, a transcoder and a JumpReLU SAE at three layers."""
    return [dictionary("relu", "layers.0.resid_post", 32, 48, seed=1),
            dictionary("topk", "layers.1.mlp.input", 32, 40, seed=2, site_out="layers.1.mlp"),
            dictionary("jumprelu", "layers.2.resid_pre", 32, 36, seed=3, threshold=0.05)]


def hand_edges(model, ds, up, down, clean, run, nodes, ablation):
    """Per downstream node ``(t, f or "error")``: ``(seq, d_sae)`` and ``(seq,)`` edges from ``up``'s parts."""
    rows, seq = run.shape
    g_f, g_e = hand_gradients(model, ds, run)[down]
    zeros = [(mx.zeros((rows, seq, d.d_sae)), mx.zeros((rows, seq, d.d_out))) for d in ds]

    def down_parts(df, de):
        saved = {}
        deltas = [(df, de) if i == up else z for i, z in enumerate(zeros)]
        hand_run(model, ds, run, deltas, parts=saved)
        return [saved[(down, "features")], saved[(down, "error")]]

    clean_parts = hand_parts(model, ds, clean)[up]
    if ablation:
        delta = [-p for p in clean_parts]
    else:
        delta = [c - r for c, r in zip(clean_parts, hand_parts(model, ds, run)[up])]
    out = []
    for t, f in nodes:
        c_f, c_e = mx.zeros_like(g_f), mx.zeros_like(g_e)
        if f == "error":
            c_e[:, t] = g_e[:, t]
        else:
            c_f[:, t, f] = g_f[:, t, f]
        j_f, j_e = mx.vjp(down_parts, list(zeros[up]), [c_f, c_e])[1]
        out.append((np.array((j_f * delta[0]).sum(0)), np.array((j_e * delta[1]).sum(axis=(0, 2)))))
    return out


@pytest.mark.parametrize("mode, up, down", [("patching", 0, 2), ("ablation", 0, 1), ("patching", 1, 2)])
def test_edges_equal_the_hand_pulled_back_gradient(model, dictionaries, mode, up, down):
    clean_p = ["the cat", "his mat"]
    corrupted_p = None if mode == "ablation" else "the mat"
    edges = mt.circuits.feature_edges(model, dictionaries, clean_p, corrupted_p, upstream=up,
                                      downstream=dictionaries[down].label if down == 2 else down, top=6,
                                      target="s", foil="t")
    clean = ids(clean_p)
    run = clean if mode == "ablation" else mx.broadcast_to(ids(corrupted_p), clean.shape)
    scores = mt.circuits.feature_attribution(model, dictionaries, clean_p, corrupted_p, target="s", foil="t")
    features, errors = scores.scores(down)
    clean = ids(clean_p)
    assert edges.mode == mode and len(edges.nodes) == 6 and edges.features.shape == (6, clean.shape[1], dictionaries[up].d_sae)
    for (t, f), s in zip(edges.nodes, edges.node_scores):  # the downstream nodes: the best by node score
        assert s == pytest.approx(errors[t] if f == "error" else features[t, f], rel=1e-5, abs=1e-7)
    ranked = np.sort(np.abs(np.concatenate([features.ravel(), errors])))[::-1]
    np.testing.assert_allclose(np.abs(edges.node_scores), ranked[:6], rtol=1e-5)
    expected = hand_edges(model, dictionaries, up, down, clean, run, edges.nodes, mode == "ablation")
    for n, (f, e) in enumerate(expected):
        np.testing.assert_allclose(edges.features[n], f, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(edges.errors[n], e, atol=2e-5, rtol=1e-4)
    assert np.abs(edges.features).max() > 1e-3 and np.abs(edges.errors).max() > 1e-3  # not a comparison of zeros
    (u_label, ut, uf), (d_label, dt, df), value = edges.top(1)[0]
    assert (u_label, d_label) == (scores.dictionaries[up], scores.dictionaries[down])
    n = edges.nodes.index((dt, df))
    assert value == (edges.errors[n, ut] if uf == "error" else edges.features[n, ut, uf])


def test_an_upstream_node_after_the_downstream_position_scores_exactly_zero(model, dictionaries):
    # ablation: every upstream node changes (by -u), so a zero edge is one the model's causality makes zero
    edges = mt.circuits.feature_edges(model, dictionaries, "the cat", upstream=0, downstream=2, top=30, target="s",
                                      foil="t")
    positions = {t for t, _ in edges.nodes}
    assert len(positions) > 1  # downstream nodes at several positions: some upstream positions come later
    for n, (t, _) in enumerate(edges.nodes):
        assert np.all(edges.features[n, t + 1:] == 0) and np.all(edges.errors[n, t + 1:] == 0)
        if edges.node_scores[n] != 0:
            assert np.abs(edges.errors[n, :t + 1]).min() > 0  # every earlier position reaches it


def test_save_load_and_plot(model, dictionaries, tmp_path):
    edges = mt.circuits.feature_edges(model, dictionaries, "the cat", upstream=0, downstream=1, top=4, target="s",
                                      foil="t")
    again = mt.circuits.FeatureEdges.load(edges.save(tmp_path / "edges.json"))
    assert again.top(8) == edges.top(8) and again.nodes == edges.nodes and again.downstream == edges.downstream
    np.testing.assert_array_equal(again.features, edges.features)
    pytest.importorskip("matplotlib", reason="plots need the plot extra")
    edges.plot(save_path=tmp_path / "edges.png")
    assert (tmp_path / "edges.png").stat().st_size > 1000


@pytest.mark.parametrize("kw, error, match", [
    (dict(upstream=2, downstream=0), ValueError, "must come after"),
    (dict(upstream=1, downstream=1), ValueError, "must come after"),
    (dict(upstream="relu@layers.5.resid_post", downstream=1), KeyError, "labels"),
    (dict(upstream=0, downstream=3), KeyError, "index below 3"),
    (dict(upstream=0, downstream=1, top=0), ValueError, "top"),
    (dict(upstream=0, downstream=1, top=10 ** 6), ValueError, "top"),
])
def test_bad_arguments_are_refused_before_work(model, dictionaries, kw, error, match, monkeypatch):
    module = importlib.import_module("mlxterp.circuits.feature_edges")  # the module, not the function of its name

    def never(*args, **kwargs):
        raise AssertionError("a forward ran before the arguments were checked")

    monkeypatch.setattr(module, "node_scores", never)
    with pytest.raises(error, match=match):
        mt.circuits.feature_edges(model, dictionaries, "the cat", "the mat", target="s", foil="t", **kw)
    tokens = ids("the cat")
    with model.trace(tokens):
        out = model.output.save()
    np.testing.assert_allclose(np.array(out), np.array(llama_forward(model.model, tokens)), atol=1e-5)


def test_a_quantized_model_gives_the_edges_of_its_dequantized_copy(dictionaries):
    # Quantized matmuls have no vmap rule: the downstream nodes are row blocks of one folded batch instead.
    raw = tiny_llama_module(seed=2, layers=3, hidden=32)
    nn.quantize(raw.model, group_size=32, bits=4)
    quantized = InterpretableModel(raw, tokenizer=CharTokenizer())
    floats = InterpretableModel(dequantized(raw), tokenizer=CharTokenizer())
    args = dict(upstream=0, downstream=2, top=5, target="s", foil="t")
    edges = mt.circuits.feature_edges(quantized, dictionaries, ["the cat", "his mat"], "the mat", **args)
    expected = mt.circuits.feature_edges(floats, dictionaries, ["the cat", "his mat"], "the mat", **args)
    assert edges.nodes == expected.nodes
    np.testing.assert_allclose(edges.features, expected.features, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(edges.errors, expected.errors, atol=1e-4, rtol=1e-3)
    assert np.abs(edges.errors).max() > 1e-3
