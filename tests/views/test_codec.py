"""The saved-result codec: any tree of Python values and arrays comes back equal, with the same types, the same
array library, dtype, shape and bits; what it cannot hold is refused with where it is."""

from __future__ import annotations

import json
import math
import re

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlxterp.views import codec

NUMPY_DTYPES = [np.dtype(d) for d in codec.NUMPY_DTYPES]


def same(a, b) -> bool:
    """Equal in type and value; arrays equal bit for bit (NaNs included) with the same dtype and library."""
    if type(a) is not type(b):
        return False
    if isinstance(a, mx.array):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(_bits(a), _bits(b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def _bits(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)


def round_trip(tree):
    encoded, arrays = codec.encode(tree)
    text = json.dumps(encoded, allow_nan=False)  # strict JSON: NaN and infinities are tagged
    return codec.decode(json.loads(text), {k: v.copy() for k, v in arrays.items()})


numpy_arrays = st.sampled_from(NUMPY_DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
mlx_arrays = st.builds(lambda a, dt: mx.array(a.astype(np.float32)).astype(dt),
                       hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                                  elements=st.floats(-1e4, 1e4, width=32)),
                       st.sampled_from([mx.float32, mx.bfloat16, mx.float16, mx.int32, mx.uint8, mx.bool_]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**62, 2**62), st.floats(allow_nan=True), st.text(),
                    st.builds(np.float32, st.floats(width=32)), st.builds(np.int64, st.integers(-2**62, 2**62)))
leaves = st.one_of(scalars, numpy_arrays, mlx_arrays)
keys = st.one_of(st.text(), st.integers(-5, 5), st.tuples(st.integers(0, 3), st.integers(0, 3)))
trees = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                                                     st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(trees)
def test_any_tree_round_trips_exactly(tree):
    assert same(tree, round_trip(tree))


def test_containers_keep_their_types():
    tree = {3: (1, [2.5, "x"]), "__proto__": {"a": None}, "k": {(0, 1): np.arange(3, dtype=np.uint64)}}
    back = round_trip(tree)
    assert same(tree, back) and isinstance(back[3], tuple) and isinstance(back["k"][(0, 1)], np.ndarray)


def test_bfloat16_and_float64_mlx_arrays_keep_their_bits():
    bf = mx.array([1.0, -2.5e-3, 3.14159], dtype=mx.float32).astype(mx.bfloat16)
    f64 = mx.array(np.array([1 / 3, 1e-300]), dtype=mx.float64)  # mx.array(float64 data) alone gives float32
    back = round_trip({"bf": bf, "f64": f64})
    assert same(bf, back["bf"]) and same(f64, back["f64"])


@pytest.mark.parametrize("bad,where", [({"a": [1, object()]}, "data.a[1]"), ({"s": {1, 2}}, "data.s"),
                                       ({"c": np.zeros(2, dtype=np.complex64)}, "data.c"),
                                       ({"o": np.array(["x"], dtype=object)}, "data.o")])
def test_unsupported_values_name_where_they_are(bad, where):
    with pytest.raises(TypeError, match="^" + re.escape(where) + ":"):
        codec.encode(bad)
