"""A traced item assignment (``out[index] = value``) under function transforms: under ``mx.vmap`` (a user's, or
a folded run's) it must write every mapped element, whichever of the array, the value and an array index
are mapped. MLX's own rule for a slice assignment with an unmapped value writes only the first element
(MLX 0.32), so the semantics must not lean on it. Checked against numpy, one mapped element at a time."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxterp.compiler import Node, Op
from mlxterp.compiler.semantics import evaluate

K = 3
SHAPE = (2, 4, 3)  # one element's shape
NODE = Node(0, Op.SETITEM, None, (), {}, {"source": "test"})


def setitem(x, index, value):
    return evaluate(NODE, (x, index, value), {})


# Indices of the kinds a trace records: integers (also negative), slices, ``...``, integer arrays.
INDICES = [
    (slice(None), -1),
    (slice(None), 0, slice(1, None)),
    (Ellipsis, 1),
    (0,),
    (slice(None), slice(1, 3)),
    (slice(None), mx.array([0, 2])),
    (1, mx.array([3, 1]), slice(None)),
]


def expected(x, index, value, axes):
    """Numpy, one mapped element at a time."""
    rows = []
    for j in range(K):
        out = np.array(x[j] if axes[0] == 0 else x)
        v = np.array(value[j] if axes[1] == 0 else value)
        idx = tuple(np.array(p) if isinstance(p, mx.array) else p for p in index)
        out[idx] = v
        rows.append(out)
    return np.stack(rows)


def region_shape(index):
    return np.zeros(SHAPE)[tuple(np.array(p) if isinstance(p, mx.array) else p for p in index)].shape


@settings(max_examples=60, deadline=None, derandomize=True)
@given(index=st.sampled_from(INDICES), x_mapped=st.booleans(), value_kind=st.sampled_from(["number", "scalar",
       "region", "mapped_scalar", "mapped_region"]), compiled=st.booleans())
def test_vmapped_item_assignment_writes_every_element(index, x_mapped, value_kind, compiled):
    rng = np.random.default_rng(0)
    x = mx.array(rng.normal(size=((K,) if x_mapped else ()) + SHAPE).astype(np.float32))
    shape = region_shape(index)
    value = {"number": mx.array(-7.0), "scalar": mx.array(2.5), "region": mx.array(rng.normal(size=shape), mx.float32),
             "mapped_scalar": mx.array([1.0, 2.0, 3.0]),
             "mapped_region": mx.array(rng.normal(size=(K,) + shape), mx.float32)}[value_kind]
    axes = (0 if x_mapped else None, 0 if value_kind.startswith("mapped") else None)
    if axes == (None, None):
        axes = (None, 0)
        value = mx.broadcast_to(value, (K,) + tuple(value.shape))
    fn = mx.vmap(lambda a, v: setitem(a, index, v), in_axes=axes)
    got = (mx.compile(fn) if compiled else fn)(x, value)
    np.testing.assert_array_equal(np.array(got), expected(np.array(x), index, np.array(value), axes))


def test_a_mapped_array_index_writes_each_element_at_its_own_index():
    x = mx.zeros((K,) + SHAPE)
    where = mx.array([0, 2, 3])
    got = mx.vmap(lambda a, i: setitem(a, (slice(None), i), mx.array(5.0)))(x, where)
    want = np.zeros((K,) + SHAPE)
    for j in range(K):
        want[j][:, int(where[j])] = 5.0
    np.testing.assert_array_equal(np.array(got), want)


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_the_written_value_ignores_what_the_region_held(fill):
    x = mx.full(SHAPE, fill)
    got = setitem(x, (slice(None), -1), mx.array(1.5))
    assert np.all(np.array(got)[:, -1] == 1.5)


def test_the_gradient_flows_to_the_value_and_around_the_region():
    x = mx.arange(24, dtype=mx.float32).reshape(SHAPE)

    def loss(a, v):
        return (setitem(a, (slice(None), 1), v) ** 2).sum()

    ga, gv = mx.grad(loss, argnums=(0, 1))(x, mx.array(3.0))
    want = 2 * np.array(x)
    want[:, 1] = 0.0
    np.testing.assert_allclose(np.array(ga), want)
    np.testing.assert_allclose(float(gv), 2 * 3.0 * SHAPE[0] * SHAPE[2])
