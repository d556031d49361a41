"""Score metrics (logit_diff, logprob, prob, any function of the logits) in every patching function,
against loops of separate traces scored in float64 numpy."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.analysis.metrics import custom, logit_diff
from tests.models import CharTokenizer

from .conftest import CLEAN, CORRUPTED, component_name, last_logits, make_llama

TARGET, FOIL = 5, 9


def np_score(logits, metric, target=TARGET, foil=FOIL):
    logits = np.asarray(logits, np.float64)
    if metric == "logit_diff":
        return logits[target] - logits[foil]
    logprob = logits[target] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    return logprob if metric == "logprob" else np.exp(logprob)


def reference(model, component, layers, metric, positions=(None,), **tokens):
    """Recovery (m(p) - m(c)) / (m(clean) - m(c)) * 100 from one trace per patched cell."""
    names = {layer: component_name(model, layer, component) for layer in layers}
    clean, acts = last_logits(model, CLEAN, saves=list(names.values()))
    m_clean, m_corr = np_score(clean, metric, **tokens), np_score(last_logits(model, CORRUPTED)[0], metric, **tokens)
    out = np.zeros((len(layers), len(positions)))
    for i, layer in enumerate(layers):
        for j, pos in enumerate(positions):
            def write(o, a=acts[names[layer]], p=pos):
                if p is None:
                    return a
                o[:, p] = a[:, p]
                return o
            patched, _ = last_logits(model, CORRUPTED, writes={names[layer]: write})
            out[i, j] = (np_score(patched, metric, **tokens) - m_corr) / (m_clean - m_corr) * 100
    return out


@pytest.mark.parametrize("metric", ["logit_diff", "logprob", "prob"])
@pytest.mark.parametrize("component", ["mlp", "attn", "output"])
def test_activation_patching_with_a_score_metric_equals_a_loop(llama_model, metric, component):
    kwargs = {"target": TARGET} | ({"foil": FOIL} if metric == "logit_diff" else {})
    got = llama_model.activation_patching(CLEAN, CORRUPTED, component=component, metric=metric, **kwargs)
    want = reference(llama_model, component.replace("attn", "self_attn"), [0, 1, 2, 3], metric)[:, 0]
    np.testing.assert_allclose([got[i] for i in range(4)], want, atol=1e-3)


def test_patching_grid_with_logit_diff_equals_a_loop(llama_model):
    got = llama_model.patching_grid(CLEAN, CORRUPTED, component="output", layers=[0, 2], positions=[3, 7],
                                    metric="logit_diff", target=TARGET, foil=FOIL, batch_size=3)
    np.testing.assert_allclose(got.grid, reference(llama_model, "output", [0, 2], "logit_diff", (3, 7)), atol=1e-3)
    assert got.metric.startswith("logit_diff")


def test_defaults_are_the_clean_and_corrupted_predictions(llama_model):
    clean, corrupted = (int(np.argmax(last_logits(llama_model, p)[0])) for p in (CLEAN, CORRUPTED))
    default = llama_model.activation_patching(CLEAN, CORRUPTED, metric="logit_diff")
    explicit = llama_model.activation_patching(CLEAN, CORRUPTED, metric=logit_diff(clean, corrupted))
    assert default == pytest.approx(explicit, abs=1e-4)


def test_a_function_of_the_logits_is_a_metric(llama_model):
    by_name = llama_model.activation_patching(CLEAN, CORRUPTED, metric="logit_diff", target=TARGET, foil=FOIL)
    by_function = llama_model.activation_patching(CLEAN, CORRUPTED, metric=lambda x: x[:, TARGET] - x[:, FOIL])
    negated = llama_model.activation_patching(CLEAN, CORRUPTED, metric=custom(lambda x: x[:, FOIL] - x[:, TARGET]))
    assert by_function == pytest.approx(by_name, abs=1e-4) and negated == pytest.approx(by_name, abs=1e-4)


def _finite_difference(model, layer, pos, eps=1e-2):
    name = component_name(model, layer, "mlp")
    clean, acts = last_logits(model, CLEAN, saves=[name])
    corrupted, corr = last_logits(model, CORRUPTED, saves=[name])
    m_clean, m_corr = np_score(clean, "logit_diff"), np_score(corrupted, "logit_diff")
    delta = acts[name] - corr[name]
    mask = (mx.arange(8) == pos)[None, :, None]

    def recovery(step):
        logits, _ = last_logits(model, CORRUPTED, writes={name: lambda out: out + mx.where(mask, step * delta, 0.0)})
        return (np_score(logits, "logit_diff") - m_corr) / (m_clean - m_corr) * 100

    return (recovery(eps) - recovery(-eps)) / (2 * eps)


def test_attribution_with_logit_diff_equals_finite_difference(llama_model):
    got = llama_model.attribution_patching(CLEAN, CORRUPTED, component="mlp", metric="logit_diff",
                                           target=TARGET, foil=FOIL)
    for layer, pos in [(0, 3), (2, 5), (3, 7)]:
        np.testing.assert_allclose(got.grid[layer, pos], _finite_difference(llama_model, layer, pos), rtol=2e-2,
                                   atol=1e-3)


@pytest.fixture(scope="module")
def text_model():
    return InterpretableModel(make_llama(seed=4), tokenizer=CharTokenizer())


def test_tokens_as_text(text_model):
    by_text = text_model.activation_patching("abcd", "abxd", metric="logprob", target="e")
    by_id = text_model.activation_patching("abcd", "abxd", metric="logprob", target=text_model.encode("e")[1])
    assert by_text == pytest.approx(by_id)


@pytest.mark.parametrize("kwargs,match", [
    (dict(metric="l2", target="e"), "target/foil: only used with metric='logit_diff'"),
    (dict(metric="prob", target="e", foil="f"), "foil: only used with metric='logit_diff'"),
    (dict(metric="logprob", target="ef"), r"target: 'ef' is 2 tokens"),
    (dict(metric="logit_diff", target="e", foil="e"), "target and foil are the same token"),
    (dict(metric="logprob", target=10_000), "token id 10000 is out of range"),
    (dict(metric=lambda x: x), "must map logits of shape"),
    (dict(metric="kl"), "metric: expected one of 'l2', 'cosine', 'mse', 'logit_diff'"),
])
def test_bad_metric_arguments(text_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        text_model.activation_patching("abcd", "abxd", **kwargs)
