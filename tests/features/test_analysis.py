"""Feature analysis against hand computations: top-activating contexts and densities from the hand-written
forward with a hand encoding, logit effects through a hand-written final norm and unembedding, the top features
of each token, feature attribution against a gradient written through the reference forward, and attribution
against exact ablation on a near-linear case."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import InterpretableModel
from tests.features.helpers import dictionary, hand_decode, hand_encode, ref_site
from tests.models import CharTokenizer, tiny_llama_module
from tests.reference import llama_forward, rms_norm

PROMPTS = ["hello world", "the cat sat on the mat", "abc", "zyx wvu tsr", "mat cat"]


@pytest.fixture(scope="module")
def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=2, layers=3, hidden=32), tokenizer=CharTokenizer())


def site_values(model, d, prompt) -> np.ndarray:
    """The dictionary's input site on one prompt, from the hand-written forward ``(seq, d_in)``."""
    seen = {}
    llama_forward(model.model, mx.array([CharTokenizer().encode(prompt)]), lambda s, v: seen.setdefault(s, v))
    return seen[ref_site(d.site)][0]


def test_top_contexts_and_densities_equal_a_hand_encoding_of_every_prompt(model):
    d = dictionary("relu", "layers.1.resid_pre", 32, 48, seed=3)
    ctx = mt.features.top_contexts(model, d, PROMPTS, k=3, window=(2, 1), logits=0, batch_size=2)
    acts = [np.array(hand_encode(d, site_values(model, d, p))) for p in PROMPTS]  # (seq, d_sae) each
    ids = [CharTokenizer().encode(p) for p in PROMPTS]
    kept = [(p, t) for p, row in enumerate(ids) for t in range(len(row)) if row[t] != 1]  # BOS is not evaluated
    fires = sum((acts[p][t] > 0).astype(float) for p, t in kept)
    np.testing.assert_allclose(ctx.density, fires / len(kept), atol=1e-7)
    assert ctx.tokens_seen == len(kept)
    for feature in range(d.d_sae):
        ranked = sorted(((acts[p][t, feature], p, t) for p, t in kept if acts[p][t, feature] > 0), reverse=True)[:3]
        got = ctx.top(feature)
        assert len(got) == len(ranked), feature
        for c, (value, p, t) in zip(got, ranked):
            assert (c["prompt"], c["position"]) == (p, t) and c["activation"] == pytest.approx(value, rel=1e-5)
            window = [o for o in range(t - 2, t + 2) if 0 <= o < len(ids[p])]
            assert c["tokens"] == [model.token_to_str(ids[p][o]) for o in window]
            expected = [None if ids[p][o] == 1 else acts[p][o, feature] for o in window]
            assert [a is None for a in c["activations"]] == [v is None for v in expected]
            assert [a for a in c["activations"] if a is not None] == pytest.approx(
                [v for v in expected if v is not None], rel=1e-5, abs=1e-6)


def test_logit_effects_equal_the_decoder_rows_through_a_hand_written_norm_and_head(model):
    d = dictionary("relu", "layers.2.mlp", 32, 48, seed=4)
    effects = mt.features.logit_effects(model, d, [0, 5, 47], k=4)
    inner = model.model.model
    rows = np.array(rms_norm(d.W_dec / d.output_scale, inner.norm.weight, model.model.args.rms_norm_eps)
                    @ model.model.lm_head.weight.T)
    for i, feature in enumerate([0, 5, 47]):
        order = np.argsort(-rows[feature])
        assert list(effects.promoted[i]) == list(order[:4])
        assert list(effects.suppressed[i]) == list(order[::-1][:4])
        np.testing.assert_allclose(effects.promoted_values[i], rows[feature][order[:4]], rtol=1e-5, atol=1e-5)
    assert effects.top(5)["promoted"][0] == (model.token_to_str(int(np.argmax(rows[5]))), pytest.approx(rows[5].max(),
                                                                                                      rel=1e-5))


def test_token_features_are_each_tokens_largest(model):
    d = dictionary("topk", "layers.1.resid_pre", 32, 48, seed=5)
    tf = mt.features.token_features(model, d, "the cat", k=3)
    acts = np.array(hand_encode(d, site_values(model, d, "the cat")))
    for t in range(acts.shape[0]):
        order = [f for f in np.argsort(-acts[t]) if acts[t, f] > 0][:3]
        assert [f for f, _ in tf.top(t)] == order
        assert tf.active[t] == (acts[t] > 0).sum()


def hand_gradients(model, d, tokens, target, foil=None):
    """d metric / d features and / d error through the hand-written forward (features and error + deltas)."""
    site = ref_site(d.site)
    seq = tokens.shape[1]

    def metric(delta_f, delta_e):
        def hook(s, value):
            if s != site:
                return value
            f = hand_encode(d, value)
            r = hand_decode(d, f)
            e = value - r
            return hand_decode(d, f + delta_f) + e + delta_e
        logits = llama_forward(model.model, tokens, hook)[0, -1]
        logp = logits - mx.logsumexp(logits)
        return logp[target] if foil is None else logits[target] - logits[foil]

    return mx.grad(metric, argnums=(0, 1))(mx.zeros((1, seq, d.d_sae)), mx.zeros((1, seq, d.d_out)))


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_ablation_attribution_equals_a_gradient_through_the_hand_written_forward(model, arch):
    d = dictionary(arch, "layers.1.resid_post", 32, 48, seed=6)
    tokens = mx.array([CharTokenizer().encode("the mat")])
    attr = mt.features.attribution(model, d, "the mat", target=" ")
    target = CharTokenizer().encode(" ")[-1]
    g_f, g_e = hand_gradients(model, d, tokens, target)
    seen = {}
    llama_forward(model.model, tokens, lambda s, v: seen.setdefault(s, v))
    x = seen[ref_site(d.site)]
    f = hand_encode(d, x)
    e = x - hand_decode(d, f)
    np.testing.assert_allclose(attr.scores, np.array(-f * g_f)[0], atol=1e-5)
    np.testing.assert_allclose(attr.error, np.array(-(e * g_e).sum(-1))[0], atol=1e-5)
    assert attr.mode == "ablation" and attr.metric == f"logprob({model.token_to_str(target)!r})"


def test_patching_attribution_takes_the_gradient_on_the_corrupted_run(model):
    d = dictionary("relu", "layers.1.resid_pre", 32, 48, seed=7)
    clean, corrupted = "the cat", "the mat"
    attr = mt.features.attribution(model, d, clean, corrupted=corrupted, metric="logit_diff", target="s", foil="t")
    ids = [CharTokenizer().encode(p) for p in (clean, corrupted)]
    g_f, _ = hand_gradients(model, d, mx.array([ids[1]]), CharTokenizer().encode("s")[-1],
                            CharTokenizer().encode("t")[-1])
    f_clean, f_corr = (hand_encode(d, site_values(model, d, p)) for p in (clean, corrupted))
    np.testing.assert_allclose(attr.scores, np.array((f_clean - f_corr)[None] * g_f)[0], atol=1e-5)
    assert attr.tokens == [model.token_to_str(t) for t in ids[1]]
    # the exact patching of each top feature, against the hand-written forward with that value patched in
    t, f = attr.top(1)[0][0], attr.top(1)[0][2]

    def patch(parts):
        g = mx.array(parts["features"])
        g[:, t, f] = f_clean[t, f]
        parts["features"] = g

    from tests.features.helpers import spliced_reference

    s, t_ = CharTokenizer().encode("s")[-1], CharTokenizer().encode("t")[-1]
    base = llama_forward(model.model, mx.array([ids[1]]))[0, -1]
    patched = spliced_reference(model.model, mx.array([ids[1]]), [(d, True, patch)])[0, -1]
    exact = mt.features.feature_patching(model, d, clean, corrupted, [f], position=t, metric="logit_diff",
                                         target="s", foil="t")[0]
    assert exact == pytest.approx(float((patched[s] - patched[t_]) - (base[s] - base[t_])), abs=1e-4)


def test_attribution_approximates_exact_ablation_where_the_model_is_near_linear(model):
    # The last layer's output, with small decoder rows: removing one feature moves the residual a little, so
    # the final norm and the unembedding (all that follows) are near-linear in it.
    d = dictionary("relu", "layers.2.resid_post", 32, 48, seed=8)
    d.W_dec = d.W_dec * 0.05
    attr = mt.features.attribution(model, d, "the cat sat", metric="logit_diff", target="a", foil="e")
    positions, features = [t for t, _, _, _ in attr.top(6)], [f for _, _, f, _ in attr.top(6)]
    for t, f in zip(positions, features):
        exact = mt.features.feature_ablation(model, d, "the cat sat", [f], position=t, metric="logit_diff",
                                             target="a", foil="e")[0]
        assert attr.scores[t, f] == pytest.approx(exact, rel=0.05, abs=1e-4), (t, f)
    # and the exact ablation itself against the hand-written forward with the feature zeroed
    tokens = mx.array([CharTokenizer().encode("the cat sat")])
    a, e_ = CharTokenizer().encode("a")[-1], CharTokenizer().encode("e")[-1]
    t, f = positions[0], features[0]

    def zero(parts):
        g = mx.array(parts["features"])
        g[:, t, f] = 0.0
        parts["features"] = g

    from tests.features.helpers import spliced_reference

    clean = llama_forward(model.model, tokens)[0, -1]
    ablated = spliced_reference(model.model, tokens, [(d, True, zero)])[0, -1]
    exact = mt.features.feature_ablation(model, d, "the cat sat", [f], position=t, metric="logit_diff", target="a",
                                         foil="e")[0]
    assert exact == pytest.approx(float((ablated[a] - ablated[e_]) - (clean[a] - clean[e_])), abs=1e-4)


def test_results_save_load_and_plot(model, tmp_path):
    d = dictionary("relu", "layers.1.resid_pre", 32, 48, seed=9)
    results = [mt.features.top_contexts(model, d, PROMPTS[:3], k=2, logits=3),
               mt.features.token_features(model, d, "hello"),
               mt.features.attribution(model, d, "hello"),
               mt.features.logit_effects(model, d, [1, 2], k=3)]
    for i, result in enumerate(results):
        path = result.save(tmp_path / f"r{i}.json")
        again = mt.views.load_result(path, model=model)
        assert type(again) is type(result)
        for name, value in result._record_fields().items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(again, name), value)
    ctx = results[0]
    assert mt.features.FeatureContexts.load(tmp_path / "r0.json").effects.top(1) == ctx.effects.top(1)
    pytest.importorskip("matplotlib", reason="plots need the plot extra")
    ctx.plot(1, save_path=tmp_path / "ctx.png")
    results[1].plot(save_path=tmp_path / "tok.png")
    results[2].plot(save_path=tmp_path / "attr.png")
    results[3].plot(2, save_path=tmp_path / "logits.png")
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("ctx.png", "tok.png", "attr.png", "logits.png"))


@pytest.mark.parametrize("call, error, match", [
    (lambda m, d: mt.features.attribution(m, d, "hello", metric="l2"), ValueError, "distance"),
    (lambda m, d: mt.features.attribution(m, d, "hello", corrupted="hi"), ValueError, "same number of tokens"),
    (lambda m, d: mt.features.top_contexts(m, d, PROMPTS, features=[48]), ValueError, r"\[0, 47\]"),
    (lambda m, d: mt.features.top_contexts(m, d, PROMPTS, window=3), ValueError, "before, after"),
    (lambda m, d: mt.features.top_contexts(m, d, []), ValueError, "prompts is empty"),
    (lambda m, d: mt.features.feature_ablation(m, d, "hello", [1], position=9), IndexError, "out of range"),
    (lambda m, d: mt.features.token_features(m, d, ["a", "b"]), ValueError, "single prompt"),
])
def test_bad_arguments(model, call, error, match):
    d = dictionary("relu", "layers.1.resid_pre", 32, 48)
    with pytest.raises(error, match=match):
        call(model, d)
