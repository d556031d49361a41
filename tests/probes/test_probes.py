"""Probes: least squares against the closed form, logistic regression on a separable set, softmax classes, labels
per prompt of a store with a held-out split by prompt, the probe inside traces and generations, save/load, and
the errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxterp as mt
from mlxterp import collect_activations
from mlxterp.probes.objective import row_losses
from mlxterp.views.generation import token_values

RNG = np.random.default_rng(0)
X = RNG.normal(size=(600, 8)).astype(np.float32) * 3 + 1.5


def test_a_linear_probe_finds_the_least_squares_solution():
    true = RNG.normal(size=(8, 2))
    y = (X @ true + np.array([0.5, -2.0]) + RNG.normal(size=(600, 2)) * 0.3).astype(np.float64)
    probe = mt.Probe.train(X, y, holdout=0.0, epochs=300, batch_size=200, lr=3e-2)
    design = np.concatenate([X, np.ones((600, 1))], axis=1).astype(np.float64)
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    assert probe.kind == "linear" and probe.weight.shape == (8, 2)
    np.testing.assert_allclose(np.array(probe.weight), solution[:8], atol=2e-3)
    np.testing.assert_allclose(np.array(probe.bias), solution[8], atol=5e-3)
    score = probe.score(X, y)
    residual = y - design @ solution
    best = 1 - np.square(residual).sum() / np.square(y - y.mean(axis=0)).sum()
    assert score.r2 == pytest.approx(best, abs=1e-5) and score.accuracy is None


def test_a_logistic_probe_separates_a_separable_set_and_scores_the_held_out_rows():
    direction = np.array([1.0, -1.0, 2.0, 0, 0, 0, 0.5, 0])
    margin = (X - 1.5) @ direction
    keep = np.abs(margin) > 1.0  # a gap around the boundary: linearly separable
    x, labels = X[keep], np.where(margin[keep] > 0, "yes", "no")
    probe = mt.Probe.train(x, labels, holdout=0.25, epochs=50, batch_size=64, lr=5e-2)
    assert probe.kind == "logistic" and probe.classes == ["no", "yes"]
    assert probe.heldout.accuracy == 1.0 and probe.heldout.rows == round(0.25 * len(x))
    assert probe.score(x, labels).accuracy == 1.0
    w = np.array(probe.weight)[:, 0]
    assert w @ direction / (np.linalg.norm(w) * np.linalg.norm(direction)) > 0.9
    p = np.array(probe(mx.array(x)))
    assert p.shape == (len(x),) and np.all((p > 0.5) == (labels == "yes"))
    assert np.array_equal(np.array(probe.predict(mx.array(x))), (labels == "yes").astype(int))


def test_softmax_and_logistic_losses_equal_numpy():
    z = RNG.normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 1, 0])
    mine = np.array(row_losses("softmax", mx.array(z), mx.array(y[:, None].astype(np.float32))))
    ref = np.log(np.exp(z.astype(np.float64)).sum(axis=1)) - z[np.arange(5), y]
    np.testing.assert_allclose(mine, ref, rtol=1e-5)
    b = np.array([1, 0, 1, 1, 0], dtype=np.float32)
    mine = np.array(row_losses("logistic", mx.array(z[:, :1]), mx.array(b[:, None])))
    s = 1 / (1 + np.exp(-z[:, 0].astype(np.float64)))
    np.testing.assert_allclose(mine, -(b * np.log(s) + (1 - b) * np.log(1 - s)), rtol=1e-5)


def test_a_softmax_probe_tells_three_blobs_apart():
    centres = np.array([[4, 0, 0, 0, 0, 0, 0, 0], [0, 4, 0, 0, 0, 0, 0, 0], [0, 0, 4, 0, 0, 0, 0, 0]], np.float32)
    labels = RNG.integers(0, 3, size=600)
    x = centres[labels] + RNG.normal(size=(600, 8)).astype(np.float32)
    probe = mt.Probe.train({"layers.3.resid_pre": x}, labels, epochs=20, batch_size=100)
    assert probe.kind == "softmax" and probe.classes == [0, 1, 2] and probe.site == "layers.3.resid_pre"
    assert probe.heldout.accuracy > 0.97 and probe(mx.array(x[:4])).shape == (4, 3)


def test_labels_per_prompt_of_a_store_hold_out_whole_prompts(model, tmp_path):
    prompts = [f"{'good' if i % 2 else 'bad'} thing number {i}" for i in range(24)]
    store = collect_activations(model, prompts, layers=["layers.2.resid_pre", "layers.3"], out=tmp_path / "acts",
                                progress=False)
    labels = [i % 2 for i in range(24)]
    probe = mt.Probe.train(store, labels, site="layers.2.resid_pre", epochs=30, batch_size=64, holdout=0.25,
                           out=tmp_path / "run")
    assert probe.site == "layers.2.resid_pre" and probe.classes == [0, 1]
    lengths = store.lengths()
    assert probe.heldout.rows == sum(lengths[j] for j in _held_prompts(24, 0.25, 0))  # whole prompts held out
    assert probe.history["accuracy"][-1] > 0.9
    again = mt.Probe.train(store, labels, site="layers.2.resid_pre", epochs=30, batch_size=64, holdout=0.25,
                           out=tmp_path / "run")  # a finished run: nothing trained, the same probe
    assert mx.array_equal(again.weight, probe.weight).item()


def _held_prompts(prompts, holdout, seed):
    return np.random.default_rng([seed, 7]).permutation(prompts)[:round(holdout * prompts)]


def test_a_probe_reads_traced_values_and_colours_a_generation(model, tmp_path):
    x = RNG.normal(size=(64, 64)).astype(np.float32)
    probe = mt.Probe.train(x, (x[:, 0] > 0).astype(int), epochs=5, batch_size=32, site="layers.2")
    text = "the cat sat"
    with model.trace(text):
        h = model.layers[2].output.save()
        p = probe(model.layers[2].output).save()
        q = probe(model.layers[2].output[:, -1]).save()
    assert np.allclose(np.array(p), np.array(probe(h)), atol=1e-6) and q.shape == (1,)
    with model.generate(text, max_new_tokens=3) as gen:
        probe(model.layers[2].output[:, -1]).save("probe")
    result = gen.result()
    page = result.to_html(values="probe")
    colours = token_values(result, "probe")[0]
    assert "probe" in page and len(colours) == len(result.new_tokens[0]) and None not in colours
    loaded = mt.Probe.load(probe.save(tmp_path / "probe"))
    assert loaded.classes == [0, 1] and loaded.heldout == probe.heldout and loaded.site == "layers.2"
    assert mx.array_equal(loaded(mx.array(x)), probe(mx.array(x))).item()


def test_bad_labels_and_data_are_refused_before_training(model, tmp_path):
    with pytest.raises(ValueError, match="5 labels for 600 rows of 600 prompts"):
        mt.Probe.train(X, [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="at least two classes"):
        mt.Probe.train(X, np.zeros(600, dtype=int))
    with pytest.raises(ValueError, match="a logistic probe separates two classes, got 3"):
        mt.Probe.train(X, np.arange(600) % 3, kind="logistic")
    with pytest.raises(ValueError, match="kind must be 'auto' or one of"):
        mt.Probe.train(X, np.arange(600) % 2, kind="svm")
    with pytest.raises(ValueError, match="holdout=1.0 leaves no prompt"):
        mt.Probe.train(X, np.arange(600) % 2, holdout=1.0)
    store = collect_activations(model, ["a b", "c d"], layers=[1, 2], out=tmp_path / "acts", progress=False)
    with pytest.raises(ValueError, match="pass site= to choose one"):
        mt.Probe.train(store, [0, 1])
    with pytest.raises(ValueError, match="site 'layers.3.mlp' is not in the activation store"):
        mt.Probe.train(store, [0, 1], site="layers.3.mlp")
