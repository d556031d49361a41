"""``model.steering_vector``: a difference of mean residuals, checked against per-prompt forwards by hand."""

from __future__ import annotations

import mlx.core as mx
import pytest

from tests.models import reference_llama_forward

TOWARD = ["love", "I adore you", "kind"]
AWAY = ["hate", "I loathe it"]


def by_hand(model, prompts, layer, positions):
    means = []
    for p in prompts:
        seen = []
        reference_llama_forward(model.model, mx.array([model.encode(p)]), {layer: lambda h: seen.append(h) or h})
        h = seen[0][0]
        means.append(h[-1] if positions == "last" else h.mean(axis=0))
    return mx.stack(means).mean(axis=0)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_steering_vector_is_the_difference_of_mean_residuals(model, positions):
    v = model.steering_vector(TOWARD, AWAY, layer=2, positions=positions)
    expected = by_hand(model, TOWARD, 2, positions) - by_hand(model, AWAY, 2, positions)
    assert v.shape == (64,) and v.dtype == mx.float32
    assert mx.allclose(v, expected, atol=1e-5)


def test_steering_vector_accepts_single_prompts_and_negative_layers(model):
    v = model.steering_vector("love", "hate", layer=-1)
    assert mx.allclose(v, by_hand(model, ["love"], 3, "last") - by_hand(model, ["hate"], 3, "last"), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer=9), "layer"),
    (dict(layer=1, positions="first"), "positions"),
    (dict(layer=1, toward=[]), "toward"),
    (dict(layer=1, away=[""]), "away"),
])
def test_steering_vector_errors(model, kwargs, match):
    args = dict(toward=TOWARD, away=AWAY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        model.steering_vector(**args)
