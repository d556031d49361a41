"""explicit_attention against MLX's fused kernel, on the masks and shapes mlx-lm passes it."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxterp.adapters.attention import POINTS, explicit_attention


def _qkv(heads=4, kv_heads=2, q_len=6, k_len=6, dim=8, v_dim=8, dtype=mx.float32, seed=0):
    mx.random.seed(seed)
    q = mx.random.normal((2, heads, q_len, dim)).astype(dtype)
    k = mx.random.normal((2, kv_heads, k_len, dim)).astype(dtype)
    v = mx.random.normal((2, kv_heads, k_len, v_dim)).astype(dtype)
    return q, k, v


def _both(q, k, v, mask, sinks=None, scale=0.3):
    seen = {}
    got = explicit_attention(q, k, v, scale=scale, mask=mask, sinks=sinks,
                             emit=lambda name, value: seen.setdefault(name, value))
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask, sinks=sinks)
    return got, want, seen


def _window(q_len, k_len, window):
    qi = mx.arange(k_len - q_len, k_len)[:, None]
    ki = mx.arange(k_len)[None]
    return (ki <= qi) & (qi - ki < window)


@pytest.mark.parametrize("mask", ["causal", None, "window", "additive", "per_head"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_equals_the_fused_kernel(mask, kv_heads):
    q, k, v = _qkv(kv_heads=kv_heads)
    arrays = {"window": _window(6, 6, 3), "additive": mx.random.normal((6, 6)),
              "per_head": mx.random.uniform(shape=(2, 4, 6, 6)) > 0.3}
    got, want, seen = _both(q, k, v, arrays.get(mask, mask))
    assert mx.allclose(got, want, atol=1e-5)
    assert list(seen) == list(POINTS)
    assert seen["pattern"].shape == (2, 4, 6, 6) and seen["heads"].shape == (2, 6, 4, 8)


def test_causal_with_more_keys_than_queries_aligns_the_last_query_with_the_last_key():
    q, k, v = _qkv(q_len=2, k_len=5)
    got, want, seen = _both(q, k, v, "causal")
    assert mx.allclose(got, want, atol=1e-5)
    assert float(seen["pattern"][:, :, 0, 4].max()) == 0.0 and float(seen["pattern"][:, :, 1, 4].min()) > 0


def test_attention_sinks():
    q, k, v = _qkv()
    got, want, seen = _both(q, k, v, "causal", sinks=mx.array([0.5, -1.0, 2.0, 0.0]))
    assert mx.allclose(got, want, atol=1e-5)
    assert float(seen["pattern"].sum(-1).max()) < 1.0  # the sink takes part of each row


def test_different_value_width():  # DeepSeek's MLA: values narrower than queries and keys
    q, k, v = _qkv(kv_heads=4, dim=12, v_dim=8)
    got, want, _ = _both(q, k, v, "causal")
    assert mx.allclose(got, want, atol=1e-5) and got.shape == (2, 4, 6, 8)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision(dtype):
    q, k, v = _qkv(dtype=dtype)
    got, want, _ = _both(q, k, v, "causal")
    assert got.dtype == dtype and mx.allclose(got.astype(mx.float32), want.astype(mx.float32), atol=1e-2)


def test_unknown_mask_string():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="'sliding' is not supported"):
        explicit_attention(q, k, v, scale=1.0, mask="sliding", emit=lambda n, x: x)
