"""Tests for mlxterp.activation_cache.ActivationCache."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.activation_cache import METADATA_KEY, ActivationCache


def _arrays() -> dict[str, mx.array]:
    return {
        "layers.0.mlp": mx.arange(6, dtype=mx.float32).reshape(2, 3),
        "layers.0.self_attn": (mx.arange(8, dtype=mx.float32) / 3).astype(mx.float16),
        "layers.1.self_attn": (mx.arange(4, dtype=mx.float32) / 7).astype(mx.bfloat16),
        "layers.1.mlp": mx.array([1, -2, 3], dtype=mx.int32),
    }


def _resolver(name: str) -> str:
    # Mimics a model name resolver: "attn" is an alias of "self_attn".
    if name.endswith(".attn"):
        return name[: -len(".attn")] + ".self_attn"
    raise KeyError(name)


def test_round_trip_preserves_arrays_dtypes_and_metadata(tmp_path):
    meta = {"model": "stories260K", "prompt": "Once upon", "layers": [0, 1], "nested": {"t": 0.5}}
    cache = ActivationCache(_arrays(), metadata=meta)
    written = cache.save(tmp_path / "acts.safetensors")
    assert written == tmp_path / "acts.safetensors" and written.stat().st_size > 0

    loaded = ActivationCache.load(written)
    assert loaded.metadata == meta
    assert sorted(loaded.keys()) == sorted(cache.keys())
    for key, original in cache.items():
        restored = loaded[key]
        assert restored.dtype == original.dtype, key
        assert restored.shape == original.shape, key
        assert mx.array_equal(restored, original).item(), key


def test_bf16_and_fp16_bits_survive(tmp_path):
    values = mx.random.normal((5, 7), key=mx.random.key(0))
    cache = ActivationCache({"h": values.astype(mx.float16), "b": values.astype(mx.bfloat16)})
    loaded = ActivationCache.load(cache.save(tmp_path / "half.safetensors"))
    assert loaded["h"].dtype == mx.float16 and loaded["b"].dtype == mx.bfloat16
    # Compare raw bits so that no silent up/down-cast can hide.
    assert mx.array_equal(loaded["h"].view(mx.uint16), cache["h"].view(mx.uint16)).item()
    assert mx.array_equal(loaded["b"].view(mx.uint16), cache["b"].view(mx.uint16)).item()


def test_metadata_is_one_json_string_entry(tmp_path):
    cache = ActivationCache(_arrays(), metadata={"a": 1, "b": [1, 2]})
    path = cache.save(tmp_path / "m.safetensors")
    _, raw = mx.load(str(path), return_metadata=True)
    assert set(raw) == {METADATA_KEY}
    assert json.loads(raw[METADATA_KEY]) == {"a": 1, "b": [1, 2]}


def test_none_metadata_and_empty_cache_round_trip(tmp_path):
    loaded = ActivationCache.load(ActivationCache().save(tmp_path / "empty.safetensors"))
    assert loaded.metadata is None and len(loaded) == 0 and loaded.keys() == []


def test_save_appends_suffix_and_returns_real_path(tmp_path):
    written = ActivationCache(_arrays()).save(str(tmp_path / "acts"))
    assert written == tmp_path / "acts.safetensors" and written.exists()


def test_save_into_missing_directory_names_the_path(tmp_path):
    target = tmp_path / "nope" / "acts.safetensors"
    with pytest.raises(FileNotFoundError, match="nope"):
        ActivationCache(_arrays()).save(target)


def test_save_rejects_unserialisable_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata: expected a JSON-serialisable"):
        ActivationCache(_arrays(), metadata={"obj": object()}).save(tmp_path / "x.safetensors")


def test_load_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ActivationCache.load(missing)


def test_load_garbage_file_names_the_path(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        ActivationCache.load(bad)


def test_load_foreign_file_keeps_raw_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    mx.save_safetensors(str(path), {"w": mx.ones((2,))}, metadata={"format": "mlx"})
    loaded = ActivationCache.load(path)
    assert loaded.metadata == {"format": "mlx"} and "w" in loaded


def test_get_contains_len_keys_iter():
    arrays = _arrays()
    cache = ActivationCache(arrays)
    assert len(cache) == 4
    assert cache.keys() == list(arrays)
    assert list(cache) == list(arrays)
    assert [k for k, _ in cache.items()] == list(arrays)
    assert len(cache.values()) == 4
    assert "layers.0.mlp" in cache and "layers.9.mlp" not in cache and 3 not in cache
    assert cache.get("layers.0.mlp") is arrays["layers.0.mlp"]
    assert cache.get("layers.9.mlp") is None
    sentinel = object()
    assert cache.get("layers.9.mlp", sentinel) is sentinel


def test_resolve_hook_maps_aliases_only_when_exact_key_absent():
    arrays = _arrays()
    cache = ActivationCache(arrays, resolve=_resolver)
    assert cache.get("layers.1.attn") is arrays["layers.1.self_attn"]
    assert cache["layers.0.attn"] is arrays["layers.0.self_attn"]
    assert "layers.0.attn" in cache
    # Unknown names: resolver raises KeyError -> treated as absent, never a wrong tensor.
    assert cache.get("layers.0.ffn") is None and "layers.0.ffn" not in cache
    # Resolved key that is not stored -> absent.
    assert cache.get("layers.7.attn") is None
    # Exact key wins over the resolver.
    exact = ActivationCache({"x.attn": mx.zeros(1), "x.self_attn": mx.ones(1)}, resolve=_resolver)
    assert exact["x.attn"].item() == 0


def test_resolve_returning_non_string_is_ignored():
    cache = ActivationCache(_arrays(), resolve=lambda name: None)  # type: ignore[arg-type]
    assert cache.get("anything") is None


def test_missing_key_error_lists_close_keys():
    cache = ActivationCache(_arrays())
    with pytest.raises(KeyError) as info:
        cache["layers.0.mpl"]
    message = str(info.value)
    assert "'layers.0.mpl' not in cache" in message
    assert "closest available keys" in message and "'layers.0.mlp'" in message


def test_missing_key_error_on_empty_cache():
    with pytest.raises(KeyError, match="cache is empty"):
        ActivationCache()["anything"]


def test_repr_shows_count_keys_and_shapes():
    text = repr(ActivationCache(_arrays()))
    assert text.startswith("ActivationCache(4 activations")
    assert "'layers.0.mlp': (2, 3)" in text


def test_constructor_validates_inputs():
    with pytest.raises(TypeError, match="activations: expected str keys"):
        ActivationCache({1: mx.zeros(1)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="expected mx.array values, got ndarray for 'a'"):
        ActivationCache({"a": np.zeros(1)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="metadata: expected a dict"):
        ActivationCache({}, metadata="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="resolve: expected a callable"):
        ActivationCache({}, resolve="x")  # type: ignore[arg-type]
