"""The selections of TopK, BatchTopK and AuxK: ``kth_largest`` (chunked) equals a full sort for all inputs,
ties and infinities included; the selected values are the top ``k`` of each row (or of the whole batch)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxterp.dictionaries import architectures as archs


@st.composite
def rows(draw):
    n = draw(st.integers(1, 260))
    k = draw(st.integers(1, n))
    height = draw(st.integers(1, 3))
    pool = draw(st.sampled_from(["ties", "floats", "with_inf"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if pool == "ties":
        values = rng.integers(-3, 4, size=(height, n)).astype(np.float32)
    else:
        values = rng.normal(size=(height, n)).astype(np.float32)
    if pool == "with_inf":
        values[rng.random((height, n)) < 0.5] = -np.inf
    return values, k


@settings(max_examples=300, deadline=None)
@given(rows())
def test_kth_largest_equals_a_full_sort(case):
    values, k = case
    got = np.array(archs.kth_largest(mx.array(values), k))
    want = np.sort(values, axis=-1)[:, -k][:, None]
    np.testing.assert_array_equal(got, want)


def test_the_chunked_path_is_taken_at_real_sizes():
    assert archs._chunk(4608, 32) == 12 and archs._chunk(4096 * 4608, 4096 * 32) == 12
    assert archs._chunk(31, 2) is None  # prime: the plain top-k
    values = np.random.default_rng(0).normal(size=(64, 4608)).astype(np.float32)
    got = np.array(archs.kth_largest(mx.array(values), 32))
    np.testing.assert_array_equal(got[:, 0], np.sort(values, axis=-1)[:, -32])


def test_topk_and_batchtopk_select_the_largest_values():
    pre = np.random.default_rng(1).normal(size=(6, 96)).astype(np.float32)  # 576 values: the chunked path
    f = np.array(archs.topk_train(mx.array(pre), 5))
    for row, acts in zip(pre, f):
        top = np.sort(np.argsort(-row)[:5])
        np.testing.assert_array_equal(np.flatnonzero(acts), top[row[top] > 0])
        np.testing.assert_array_equal(acts[top], np.maximum(row[top], 0))
    for shift in (0.0, -2.5):  # -2.5: fewer positive values than the batch's k (all of them are selected)
        rows_ = pre + shift
        acts, smallest = archs.batchtopk_train(mx.array(rows_), 20)
        chosen = np.argsort(-rows_.reshape(-1))[:20]
        want = np.zeros(rows_.size, np.float32)
        want[chosen] = np.maximum(rows_.reshape(-1)[chosen], 0)
        np.testing.assert_array_equal(np.array(acts).reshape(-1), want)
        assert smallest.item() == want[want > 0].min() and (shift == 0 or (want > 0).sum() < 20)


def test_topk_is_differentiable_on_the_chunked_path():
    # A gradient through a spliced TopK dictionary (a later one in a feature circuit) runs through its
    # selection: the chunked search's gather of its indices used to raise "Cannot calculate VJP with respect
    # to indices". The gradient is ReLU's on the selected values, 0 elsewhere.
    rng = np.random.default_rng(0)
    pre = mx.array(rng.normal(size=(3, 512)).astype(np.float32))
    assert archs._chunk(512, 16) is not None
    grad = mx.grad(lambda p: (archs.topk(p, 16) * mx.arange(512)).sum())(pre)
    values = np.array(pre)
    kth = np.sort(values, axis=-1)[:, -16][:, None]
    expected = ((values >= kth) & (values > 0)) * np.arange(512, dtype=np.float32)
    np.testing.assert_array_equal(np.array(grad), expected)
