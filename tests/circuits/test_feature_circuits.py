"""Feature circuits against hand computations: node scores of several dictionaries against gradients through
the hand-written forward with every dictionary spliced by hand (ablation, patching, integrated gradients on the
input path, several prompts), scores against exact ablation where the model is linear in the features, and
faithfulness against the hand-written forward with the nodes outside a circuit replaced by hand (corrupted,
mean and zero ablation; error nodes ablated or kept); bad input refused before any work."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel
from mlxterp.names import ModuleNameError
from tests.features.helpers import dictionary, spliced_reference
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import llama_forward

TOK = CharTokenizer()
A, B = TOK.encode("s")[-1], TOK.encode("t")[-1]


def logit_diff(logits: mx.array) -> mx.array:
    return logits[:, A] - logits[:, B]


@pytest.fixture(scope="module")
def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=2, layers=3, hidden=32), tokenizer=CharTokenizer())


@pytest.fixture(scope="module")
def dictionaries() -> list:
    """An SAE, a transcoder and another SAE at three layers."""
    return [dictionary("relu", "layers.0.resid_post", 32, 48, seed=1),
            dictionary("topk", "layers.1.mlp.input", 32, 40, seed=2, site_out="layers.1.mlp"),
            dictionary("jumprelu", "layers.2.resid_pre", 32, 36, seed=3, threshold=0.05)]


@pytest.fixture(scope="module")
def scores(model, dictionaries) -> mt.circuits.FeatureScores:
    return mt.circuits.feature_attribution(model, dictionaries, "the cat", "the mat", target="s", foil="t")


def ids(prompts) -> mx.array:
    return mx.array([TOK.encode(p) for p in ([prompts] if isinstance(prompts, str) else prompts)])


def hand_run(model, ds, tokens, deltas=None, alpha=None, source=None, parts=None, replace=None):
    """The metric (mean over rows) of the hand-written forward with ``ds`` spliced by hand: ``deltas[i]`` added
    to dictionary ``i``'s features and error, ``replace[i](parts)`` editing them, the embedding moved ``alpha``
    of the way to ``source``'s; ``parts`` receives every dictionary's parts."""
    def edit(i):
        def fn(p):
            if deltas is not None:
                p["features"] = p["features"] + deltas[i][0]
                p["error"] = p["error"] + deltas[i][1]
            if replace is not None:
                replace[i](p)
        return fn

    def hook(site, value):
        if site == ("embed",) and alpha is not None:
            other = model.model.model.embed_tokens.weight[source]
            return (1 - alpha) * value + alpha * other
        return value

    logits = spliced_reference(model.model, tokens, [(d, True, edit(i)) for i, d in enumerate(ds)], parts, hook)
    return logit_diff(logits[:, -1]).mean()


def hand_gradients(model, ds, tokens, **kw):
    rows, seq = tokens.shape
    zeros = [(mx.zeros((rows, seq, d.d_sae)), mx.zeros((rows, seq, d.d_out))) for d in ds]
    return mx.grad(lambda deltas: hand_run(model, ds, tokens, deltas, **kw))(zeros)


def hand_parts(model, ds, tokens):
    saved = {}
    hand_run(model, ds, tokens, parts=saved)
    return [(saved[(i, "features")], saved[(i, "error")]) for i in range(len(ds))]


@pytest.mark.parametrize("mode, steps", [("ablation", 1), ("patching", 1), ("patching", 3)])
def test_scores_equal_gradients_through_the_hand_written_spliced_forward(model, dictionaries, mode, steps):
    clean, corrupted = ids(["the cat", "his mat"]), ids("the mat")
    scores = mt.circuits.feature_attribution(model, dictionaries, ["the cat", "his mat"],
                                             None if mode == "ablation" else "the mat", "logit_diff", steps=steps,
                                             target="s", foil="t")
    if mode == "ablation":
        grads = hand_gradients(model, dictionaries, clean)
        parts = hand_parts(model, dictionaries, clean)
        expected = [(-(f * gf).sum(0), -(e * ge).sum(axis=(0, 2))) for (f, e), (gf, ge) in zip(parts, grads)]
    else:
        run = mx.broadcast_to(corrupted, clean.shape)
        points = [hand_gradients(model, dictionaries, run, alpha=k / steps, source=clean) for k in range(steps)]
        grads = [tuple(sum(p[i][j] for p in points) / steps for j in range(2)) for i in range(len(dictionaries))]
        ends = hand_parts(model, dictionaries, clean), hand_parts(model, dictionaries, run)
        expected = [(((fc - fr) * gf).sum(0), ((ec - er) * ge).sum(axis=(0, 2)))
                    for (fc, ec), (fr, er), (gf, ge) in zip(*ends, grads)]
    assert scores.mode == mode and scores.steps == steps and len(scores.features) == 3
    for i, (f, e) in enumerate(expected):
        np.testing.assert_allclose(scores.features[i], np.array(f), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(scores.errors[i], np.array(e), atol=2e-5, rtol=1e-4)
    assert scores.clean == pytest.approx(float(hand_run(model, dictionaries, clean)), abs=1e-5)
    assert any(np.abs(f).max() > 1e-3 for f in scores.features)  # the comparison is not of zeros
    top = scores.top(4)
    assert [abs(s) for *_, s in top] == sorted((abs(s) for *_, s in top), reverse=True)
    label, t, token, feature, value = top[0]
    features, errors = scores.scores(label)
    assert value == (errors[t] if feature == "error" else features[t, feature])
    assert token == TOK.decode([TOK.encode("the cat")[t]])


@pytest.fixture(scope="module")
def linear_model() -> InterpretableModel:
    """A model whose logits are linear in its last residual: the final RMSNorm's epsilon dwarfs ``mean(x^2)``,
    so its scale is a constant to float precision."""
    module = tiny_llama_module(seed=5, layers=2, hidden=32)
    module.model.norm.eps = 1e8
    return InterpretableModel(module, tokenizer=CharTokenizer())


def test_scores_equal_exact_ablation_where_the_model_is_linear_in_the_features(linear_model):
    # The last layer's transcoder and the SAE after it: each node reaches the logits through linear maps only
    # (the SAE after the transcoder passes its input through: its error absorbs the change).
    ds = [dictionary("relu", "layers.1.mlp.input", 32, 48, seed=6, site_out="layers.1.mlp"),
          dictionary("relu", "layers.1.resid_post", 32, 40, seed=7)]
    scores = mt.circuits.feature_attribution(linear_model, ds, "the cat", metric=lambda z: z[:, A] - z[:, B])
    seq = len(TOK.encode("the cat"))
    features = [(label, t, f, s) for label, t, _, f, s in scores.top(scores.n_nodes) if f != "error"][:6]
    assert {label for label, *_ in features} == set(scores.dictionaries)  # both dictionaries among the best
    for label, t, f, s in features:
        d = ds[scores.dictionaries.index(label)]
        exact = mt.features.feature_ablation(linear_model, d, "the cat", [f], position=t,
                                             metric=lambda z: z[:, A] - z[:, B])[0]
        assert s == pytest.approx(exact, rel=1e-3, abs=1e-9), (label, t, f)
    assert all(np.all(f[:-1] == 0) for f in scores.features)  # earlier positions never reach the last
    # every node's exact effect: the circuit of all nodes but one, zero-ablating the rest
    nodes = scores.top(scores.n_nodes)[:4] + [(scores.dictionaries[0], seq - 1, None, "error", scores.errors[0][-1])]
    circuits = []
    for label, t, _, f, _ in nodes:
        everything = scores.circuit(n_nodes=scores.n_nodes)
        i = everything.dictionaries.index(label)
        if f == "error":
            everything.errors[i][t] = False
        else:
            everything.features[i][t, f] = False
        circuits.append(everything)
    curve = mt.circuits.feature_faithfulness(linear_model, ds, circuits, "the cat", metric=lambda z: z[:, A] - z[:, B],
                                             ablation="zero")
    np.testing.assert_allclose(curve.values - curve.clean, [s for *_, s in nodes], rtol=1e-3, atol=1e-9)


def hand_circuit(model, ds, clean, sources, circuit, keep_errors):
    """The metric of the hand-written forward with every node outside ``circuit`` replaced by its source."""
    def replace(i):
        def fn(p):
            keep_f = mx.array(circuit.features[i])
            keep_e = mx.array(np.ones(clean.shape[1], bool) if keep_errors else circuit.errors[i])[:, None]
            p["features"] = mx.where(keep_f, p["features"], sources[i][0])
            p["error"] = mx.where(keep_e, p["error"], sources[i][1])
        return fn

    return float(hand_run(model, ds, clean, replace=[replace(i) for i in range(len(ds))]))


@pytest.mark.parametrize("ablation, errors", [("corrupted", "ablate"), ("corrupted", "keep"), ("mean", "ablate"),
                                              ("zero", "keep")])
def test_faithfulness_equals_the_hand_written_forward_with_nodes_replaced(model, dictionaries, ablation, errors):
    clean_p, corrupted_p = ["the cat", "his mat"], ["the mat", "her hat"]
    clean, corrupted = ids(clean_p), ids(corrupted_p)
    scores = mt.circuits.feature_attribution(model, dictionaries, clean_p, corrupted_p, target="s", foil="t")
    sizes = [0, 3, 25, scores.n_nodes]
    curve = mt.circuits.feature_faithfulness(model, dictionaries, scores, clean_p,
                                             None if ablation == "zero" else corrupted_p, sizes=sizes,
                                             ablation=ablation, errors=errors, target="s", foil="t")
    parts = hand_parts(model, dictionaries, corrupted)
    if ablation == "mean":
        parts = [tuple(mx.broadcast_to(p.mean(0, keepdims=True), p.shape) for p in pair) for pair in parts]
    elif ablation == "zero":
        parts = [tuple(mx.zeros_like(p) for p in pair) for pair in parts]
    circuits = [scores.circuit(n_nodes=n) for n in sizes]
    expected = [hand_circuit(model, dictionaries, clean, parts, c, errors == "keep") for c in circuits]
    assert curve.unit == "nodes" and curve.sizes == sizes
    np.testing.assert_allclose(curve.values, expected, atol=2e-5)
    full = float(hand_run(model, dictionaries, clean))
    assert curve.clean == pytest.approx(full, abs=1e-5) and curve.values[-1] == pytest.approx(full, abs=1e-5)
    assert curve.baseline == pytest.approx(expected[0], abs=2e-5)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    if ablation == "corrupted" and errors == "ablate":  # every node ablated after layer 0's residual: corrupted run
        assert curve.baseline == pytest.approx(scores.corrupted, abs=1e-5)


def test_results_save_load_and_plot(model, dictionaries, tmp_path):
    scores = mt.circuits.feature_attribution(model, dictionaries, "the cat", "the mat", target="s", foil="t")
    circuit = scores.circuit(threshold=abs(scores.top(7)[-1][-1]))
    assert len(circuit) == 7 and scores.top(1)[0][:2] + scores.top(1)[0][3:4] in circuit
    assert circuit.nodes[0][0] == scores.dictionaries[0]
    again = mt.circuits.FeatureScores.load(scores.save(tmp_path / "scores.json"))
    assert again.top(5) == scores.top(5) and again.dictionaries == scores.dictionaries
    loaded = mt.views.load_result(circuit.save(tmp_path / "circuit.json"), model=model)
    assert isinstance(loaded, mt.circuits.FeatureCircuit) and loaded.nodes == circuit.nodes
    curve = mt.circuits.feature_faithfulness(model, dictionaries, [circuit], "the cat", "the mat", target="s",
                                             foil="t")
    assert mt.circuits.FaithfulnessCurve.load(curve.save(tmp_path / "curve.json")).unit == "nodes"
    pytest.importorskip("matplotlib", reason="plots need the plot extra")
    scores.plot(save_path=tmp_path / "scores.png")
    curve.plot(save_path=tmp_path / "curve.png")
    assert (tmp_path / "scores.png").stat().st_size > 1000 and (tmp_path / "curve.png").stat().st_size > 1000


@pytest.mark.parametrize("call, error, match", [
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, ds + [dictionary("relu", "layers.7.resid_pre", 32, 8)],
                                                   "the cat", "the mat"), ModuleNameError, "layers.7"),
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, ds, "the cat", "a mat"), ValueError, "same number of tokens"),
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, ds, "the cat", "the mat", metric="nope"), ValueError, "nope"),
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, ds, "the cat", "the mat", metric="l2"), ValueError, "score"),
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, ds, "the cat", steps=3), ValueError, "corrupted="),
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, ds, "the cat"), ValueError, "foil="),
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, [], "the cat", "the mat"), TypeError, "non-empty list"),
    (lambda m, ds, sc: mt.circuits.feature_attribution(m, ds[0], "the cat", "the mat"), TypeError, "list of SAEs"),
    (lambda m, ds, sc: mt.circuits.feature_faithfulness(m, ds, [], "the cat", "the mat"), ValueError, "FeatureCircuit"),
    (lambda m, ds, sc: mt.circuits.feature_faithfulness(m, ds, sc, "the cat", "the mat", ablation="x"),
     ValueError, "'corrupted', 'mean', 'zero'"),
    (lambda m, ds, sc: mt.circuits.feature_faithfulness(m, ds, sc, "the cat", "the mat", errors="x"),
     ValueError, "'ablate', 'keep'"),
    (lambda m, ds, sc: mt.circuits.feature_faithfulness(m, ds, sc, "the cat"), ValueError, "ablation='zero'"),
    (lambda m, ds, sc: mt.circuits.feature_faithfulness(m, ds[:2], sc, "the cat", "the mat", target="s", foil="t"),
     ValueError,
     "belong to dictionaries"),
    (lambda m, ds, sc: mt.circuits.feature_faithfulness(m, ds, sc, "a cat", "a mat", target="s", foil="t"), ValueError,
     "tokens"),
    (lambda m, ds, sc: mt.circuits.feature_faithfulness(m, ds, sc, "the cat", "the mat", sizes=[10 ** 6]),
     ValueError, "nodes asked"),
])
def test_bad_arguments_are_refused_and_the_model_is_left_as_it_was(model, dictionaries, scores, call, error, match):
    with pytest.raises(error, match=match):
        call(model, dictionaries, scores)
    tokens = ids("the cat")
    with model.trace(tokens):
        out = model.output.save()
    np.testing.assert_allclose(np.array(out), np.array(llama_forward(model.model, tokens)), atol=1e-5)



@pytest.mark.realmodel
def test_stories260k_scores_and_faithfulness_equal_the_hand_written_forward(stories):
    # A real llama (grouped-query attention, tied embeddings): an SAE and a TopK transcoder (its chunked
    # selection on the gradient's path) at two layers, patching with 2 steps of integrated gradients.
    ds = [dictionary("relu", "layers.1.resid_post", 64, 96, seed=11),
          dictionary("topk", "layers.3.mlp.input", 64, 256, seed=12, site_out="layers.3.mlp")]
    clean = mx.array([stories.encode("Once upon a time there was a little cat")])
    corrupted = mx.array(clean)
    corrupted[0, 7] = stories.encode(" dog")[-1]
    scores = mt.circuits.feature_attribution(stories, ds, clean, corrupted, steps=2, target=A, foil=B)
    points = [hand_gradients(stories, ds, corrupted, alpha=k / 2, source=clean) for k in range(2)]
    ends = hand_parts(stories, ds, clean), hand_parts(stories, ds, corrupted)
    for i, ((fc, ec), (fr, er)) in enumerate(zip(*ends)):
        gf, ge = (sum(p[i][j] for p in points) / 2 for j in range(2))
        np.testing.assert_allclose(scores.features[i], np.array(((fc - fr) * gf).sum(0)), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(scores.errors[i], np.array(((ec - er) * ge).sum(axis=(0, 2))), atol=2e-5,
                                   rtol=1e-4)
    circuit = scores.circuit(n_nodes=30)
    curve = mt.circuits.feature_faithfulness(stories, ds, [circuit], clean, corrupted, target=A, foil=B)
    expected = hand_circuit(stories, ds, clean, ends[1], circuit, keep_errors=False)
    assert curve.values[0] == pytest.approx(expected, abs=2e-5)
