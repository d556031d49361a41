"""The DAS subspace's parametrisation and the interchange map, against their definitions in numpy."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxterp.circuits.das_rotation import householder, interchange, position_selector
from tests.circuits.das_reference import hand_interchange

shapes = st.integers(1, 24).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n)))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_householder_columns_are_orthonormal(shape, seed, scale):
    n, d = shape
    vectors = mx.array(np.random.default_rng(seed).normal(size=(d, n)) * scale, dtype=mx.float32)
    basis = householder(vectors)
    assert basis.shape == (n, d)
    assert float(mx.abs(basis.T @ basis - mx.eye(d)).max()) < 1e-5


def test_householder_is_the_product_of_reflections():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, 7))
    product = np.eye(7)
    for v in vectors:  # H_1 H_2 H_3, each I - 2 v v^T / |v|^2
        product = product @ (np.eye(7) - 2 * np.outer(v, v) / (v @ v))
    got = householder(mx.array(vectors, dtype=mx.float32))
    np.testing.assert_allclose(np.array(got), product[:, :3], atol=1e-6)


def test_every_orthonormal_frame_is_reachable():
    # Householder QR of a frame Q gives vectors whose product of reflections has Q's columns (up to signs).
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(9, 4)))
    a, vectors = q.copy(), []
    for i in range(4):
        x = a[i:, i]
        v = np.zeros(9)
        v[i:] = x + np.copysign(np.linalg.norm(x), x[0]) * np.eye(len(x))[0]
        vectors.append(v)
        a -= 2 * np.outer(v, v @ a) / (v @ v)
    got = np.array(householder(mx.array(np.array(vectors), dtype=mx.float32)))
    signs = np.sign(np.sum(got * q, axis=0))
    np.testing.assert_allclose(got * signs, q, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), seq=st.integers(1, 6), data=st.data())
def test_interchange_is_pyvenes_rotate_swap_rotate_back(shape, seed, seq, data):
    n, d = shape
    positions = tuple(data.draw(st.lists(st.integers(-seq, seq - 1), min_size=1, max_size=seq,
                                         unique_by=lambda p: p % seq)))
    rng = np.random.default_rng(seed)
    base, source = rng.normal(size=(2, seq, n)), rng.normal(size=(2, len(positions), n))
    basis = np.array(householder(mx.array(rng.normal(size=(d, n)), dtype=mx.float32)))
    got = interchange(mx.array(base, dtype=mx.float32), mx.array(basis), mx.array(source, dtype=mx.float32), positions)
    expected = hand_interchange(base, source, basis, [p % seq for p in positions])
    np.testing.assert_allclose(np.array(got), expected, atol=2e-5)
    untouched = [i for i in range(seq) if i not in {p % seq for p in positions}]
    assert np.array_equal(np.array(got)[:, untouched], base.astype(np.float32)[:, untouched])  # exactly


def test_interchange_with_the_base_as_source_is_the_identity():
    rng = np.random.default_rng(1)
    base = mx.array(rng.normal(size=(2, 5, 8)), dtype=mx.float32)
    basis = householder(mx.array(rng.normal(size=(3, 8)), dtype=mx.float32))
    same = interchange(base, basis, base[:, [1, 4]], (1, -1))
    np.testing.assert_allclose(np.array(same), np.array(base), atol=1e-6)


def test_full_rank_interchange_takes_the_source():
    rng = np.random.default_rng(2)
    base, source = (mx.array(rng.normal(size=s), dtype=mx.float32) for s in ((2, 4, 6), (2, 1, 6)))
    basis = householder(mx.array(rng.normal(size=(6, 6)), dtype=mx.float32))
    got = interchange(base, basis, source, (-1,))
    np.testing.assert_allclose(np.array(got[:, -1]), np.array(source[:, 0]), atol=1e-5)
    assert mx.array_equal(got[:, :-1], base[:, :-1])


def test_interchange_keeps_the_activation_dtype():
    base = mx.ones((1, 3, 4), dtype=mx.bfloat16)
    basis = householder(mx.ones((1, 4)))
    assert interchange(base, basis, mx.zeros((1, 1, 4)), (-1,)).dtype == mx.bfloat16


def test_a_position_outside_the_activation_says_which():
    with pytest.raises(IndexError, match="DAS position 5 is outside this activation's 3 token positions"):
        position_selector((5,), 3, mx.float32)
