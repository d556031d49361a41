"""Patching distances: references, float16 stability at a 150k vocabulary, errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.analysis.metrics import METRICS, check_metric, distance

from .conftest import np_distance


@pytest.mark.parametrize("metric", METRICS)
def test_distances_match_numpy(metric):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 50)), rng.normal(size=(1, 50))
    got = np.array(distance(mx.array(a, dtype=mx.float32), mx.array(b, dtype=mx.float32), metric))
    want = [np_distance(row, b, metric) for row in a]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_float16_large_vocab_is_finite(metric):
    rng = np.random.default_rng(1)
    a = rng.uniform(-6e4, 6e4, size=(2, 150_000)).astype(np.float16)
    b = rng.uniform(-6e4, 6e4, size=(1, 150_000)).astype(np.float16)
    got = np.array(distance(mx.array(a), mx.array(b), metric))
    assert np.all(np.isfinite(got))
    want = [np_distance(row, b, metric) for row in a]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_identical_vectors_have_zero_distance():
    x = mx.array([[1.0, -2.0, 3.0]])
    for metric in METRICS:
        assert abs(distance(x, x, metric).item()) < 1e-6


@pytest.mark.parametrize("bad", ["L2", "kl", None, 3])
def test_bad_metric_lists_choices(bad):
    with pytest.raises(ValueError, match=r"metric: expected one of 'l2', 'cosine', 'mse'"):
        check_metric(bad)
