"""The activation store: what is written equals what is computed in memory and by a forward written by
hand; the manifest refuses a mismatched rerun; the reader's batches, selections and dtypes; bounded memory.
"""

from __future__ import annotations

import gc
import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.base import create_attention_mask

from mlxterp import ActivationStore, InterpretableModel, batch_get_activations, collect_activations
from mlxterp.store import StoreMismatchError
from mlxterp.store.manifest import prompt_hashes
from tests.models import CharTokenizer, tiny_llama_module

PROMPTS = [f"the {i}th prompt" + "!?" * (i % 5) for i in range(23)]


@pytest.fixture(scope="module")
def model():
    return InterpretableModel(tiny_llama_module(seed=1), tokenizer=CharTokenizer())


def hand_forward(m: InterpretableModel, text: str) -> dict:
    """Every layer's output and each layer's MLP output for one unpadded prompt, by hand: ``(seq, hidden)``."""
    inner = m.model.model
    h = inner.embed_tokens(mx.array([CharTokenizer().encode(text)]))
    mask = create_attention_mask(h, None)
    out = {}
    for i, layer in enumerate(inner.layers):
        mid = h + layer.self_attn(layer.input_layernorm(h), mask, None)
        mlp = layer.mlp(layer.post_attention_layernorm(mid))
        h = mid + mlp
        out[f"layers.{i}"], out[f"layers.{i}.mlp"] = h[0], mlp[0]
    mx.eval(out)
    return out


# -- what is stored ---------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", [-1, [0, 2, -1]])
def test_positions_store_equals_memory_and_a_hand_forward(tmp_path, model, positions):
    store = batch_get_activations(model, PROMPTS, layers=[1, 3], positions=positions, batch_size=4,
                                  out=tmp_path / "s", shard_size=5, progress=False)
    assert isinstance(store, ActivationStore) and store.complete and len(store) == len(PROMPTS)
    memory = batch_get_activations(model, PROMPTS, layers=[1, 3], positions=positions, batch_size=4, progress=False)
    assert store.keys == list(memory) == ["layer_1", "layer_3"]
    for key, value in memory.items():
        assert mx.array_equal(store.get(key), value).item(), key  # the same gather, shard by shard
    pos = [positions] if isinstance(positions, int) else positions
    for i in (0, 7, 22):  # an independent reference: the layers called by hand on the unpadded prompt
        ref = hand_forward(model, PROMPTS[i])
        for layer in (1, 3):
            want = ref[f"layers.{layer}"][mx.array(pos)]
            got = store.get(layer, rows=[i])[0]
            np.testing.assert_allclose(np.array(got).reshape(want.shape), np.array(want), rtol=1e-5, atol=1e-5)


def test_tokens_store_holds_every_real_token(tmp_path, model):
    store = collect_activations(model, PROMPTS, layers=["layers.2", "layers.0.mlp"], batch_size=8,
                                out=tmp_path / "t", shard_size=6, progress=False)
    lengths = [len(CharTokenizer().encode(p)) for p in PROMPTS]
    assert store.kind == "tokens" and len(store) == sum(lengths)
    np.testing.assert_array_equal(store.lengths(), lengths)
    np.testing.assert_array_equal(store.prompt_index(), np.repeat(np.arange(len(PROMPTS)), lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for i in (0, 11, 22):
        ref = hand_forward(model, PROMPTS[i])
        rows = slice(int(starts[i]), int(starts[i + 1]))
        for key in ("layers.2", "layers.0.mlp"):
            np.testing.assert_allclose(np.array(store.get(key, rows)), np.array(ref[key]), rtol=1e-5, atol=1e-5)
        cache = collect_activations(model, PROMPTS[i], layers=["layers.2"])  # the in-memory path
        assert mx.array_equal(store.get("layers.2", rows), cache["layers.2"][0]).item()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path, model, dtype):
    store = batch_get_activations(model, PROMPTS, layers=[2], batch_size=4, out=tmp_path / dtype, dtype=dtype,
                                  progress=False)
    memory = batch_get_activations(model, PROMPTS, layers=[2], batch_size=4, progress=False)["layer_2"]
    got = store.get(2)
    assert store.dtype == getattr(mx, dtype) and got.dtype == getattr(mx, dtype)
    assert mx.array_equal(got, memory.astype(getattr(mx, dtype))).item()
    assert store.get(2, dtype="float32").dtype == mx.float32
    shard = next(tmp_path.joinpath(dtype).glob("shard-*.safetensors"))
    assert shard.stat().st_size < len(PROMPTS) * 64 * 4  # half the float32 bytes (plus a small header)


def test_manifest_describes_the_collection(tmp_path, model):
    batch_get_activations(model, PROMPTS, layers=[3, 1], positions=[0, -1], out=tmp_path / "s", shard_size=10,
                          progress=False, metadata={"dataset": "test"})
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["layers"] == [3, 1] and manifest["positions"] == [0, -1] and manifest["dtype"] == "float32"
    assert manifest["model"]["class"] == "Model" and len(manifest["model"]["fingerprint"]) == 32
    assert manifest["n_prompts"] == 23 and manifest["metadata"] == {"dataset": "test"}
    assert [(e["start"], e["stop"], e["rows"]) for e in manifest["shards"]] == [(0, 10, 10), (10, 20, 10), (20, 23, 3)]
    store = ActivationStore(tmp_path / "s")
    np.testing.assert_array_equal(store.prompt_hashes(), prompt_hashes(PROMPTS))


# -- refusing a mismatched rerun ----------------------------------------------------------------------
@pytest.mark.parametrize("change, fragment", [
    ({"layers": [1]}, "layers: the store has [1, 3], this run [1]"),
    ({"positions": -2}, "positions: the store has [-1], this run [-2]"),
    ({"dtype": "float16"}, "dtype: the store has 'float32', this run 'float16'"),
    ({"prompts": PROMPTS[:-1]}, "number of prompts: the store has 23, this run 22"),
    ({"prompts": PROMPTS[:-1] + ["another"]}, "prompts: the store has prompt list sha256"),
    ({"shard_size": 4}, "shard_size: the store has 5, this run 4"),
    ({"model": "other"}, "model: the store has Model"),
])
def test_mismatched_rerun_is_refused_naming_what_differs(tmp_path, model, change, fragment):
    kwargs = dict(layers=[1, 3], positions=-1, out=tmp_path / "s", shard_size=5, progress=False)
    batch_get_activations(model, PROMPTS, **kwargs)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    other = InterpretableModel(tiny_llama_module(seed=2), tokenizer=CharTokenizer())
    m = other if change.pop("model", None) else model
    prompts = change.pop("prompts", PROMPTS)
    with pytest.raises(StoreMismatchError) as info:
        batch_get_activations(m, prompts, **{**kwargs, **change})
    assert fragment in str(info.value) and str(tmp_path / "s") in str(info.value)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before  # nothing touched


def test_mismatch_names_every_difference(tmp_path, model):
    batch_get_activations(model, PROMPTS, layers=[1], out=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatchError, match=r"layers: .*; positions: .*; dtype: "):
        batch_get_activations(model, PROMPTS, layers=[2], positions=0, dtype="bfloat16", out=tmp_path / "s",
                              progress=False)


def test_other_kind_of_store_is_refused(tmp_path, model):
    batch_get_activations(model, PROMPTS, layers=[1], out=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatchError, match="kind of rows: the store has 'positions', this run 'tokens'"):
        collect_activations(model, PROMPTS, layers=[1], out=tmp_path / "s", progress=False)


def test_resume_false_refuses_an_existing_store(tmp_path, model):
    batch_get_activations(model, PROMPTS[:3], layers=[1], out=tmp_path / "s", progress=False)
    with pytest.raises(FileExistsError, match="already holds an activation store"):
        batch_get_activations(model, PROMPTS[:3], layers=[1], out=tmp_path / "s", progress=False, resume=False)


def test_bad_prompt_is_reported_before_anything_is_written(tmp_path, model):
    prompts = PROMPTS + [[1, 500]]  # a token id outside the 128-row embedding, prompt 23
    with pytest.raises(ValueError, match="token id 500 in prompt 23"):
        batch_get_activations(model, prompts, layers=[1], out=tmp_path / "s", shard_size=4, progress=False)
    assert not list((tmp_path / "s").glob("shard-*"))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"dtype": "int8"}, "dtype must be None"),
    ({"shard_size": 0}, "shard_size must be an int >= 1"),
    ({"resume": "yes"}, "resume must be True or False"),
])
def test_bad_store_arguments(tmp_path, model, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        batch_get_activations(model, PROMPTS, layers=[1], out=tmp_path / "s", progress=False, **kwargs)


def test_out_that_is_a_file_is_refused(tmp_path, model):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        batch_get_activations(model, PROMPTS, layers=[1], out=tmp_path / "f", progress=False)


# -- reading ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s"
    return batch_get_activations(model, PROMPTS, layers=[0, 2], positions=[0, -1], out=out, shard_size=6,
                                 progress=False)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_visit_every_row_once(store, shuffle):
    full = np.array(store.get(2))
    batches = list(store.batches(5, shuffle=shuffle, seed=3))
    assert [len(b["layer_2"]) for b in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([np.array(b["layer_2"]) for b in batches])
    if shuffle:  # a permutation of the rows (rows are distinct: match them back)
        order = [int(np.flatnonzero((full == row).all(axis=(1, 2)))[0]) for row in seen]
        assert sorted(order) == list(range(len(PROMPTS))) and order != sorted(order)
    else:
        np.testing.assert_array_equal(seen, full)


def test_batches_options(store):
    assert [len(b["layer_0"]) for b in store.batches(5, drop_last=True)] == [5, 5, 5, 5]
    first = next(store.batches(4, layers=[2], dtype="bfloat16"))
    assert list(first) == ["layer_2"] and first["layer_2"].dtype == mx.bfloat16 and first["layer_2"].shape == (4, 2, 64)
    a = [np.array(b["layer_0"]) for b in store.batches(7, shuffle=True, seed=11)]
    b = [np.array(b["layer_0"]) for b in store.batches(7, shuffle=True, seed=11)]
    assert all((x == y).all() for x, y in zip(a, b))  # a seed gives the same epoch


def test_select_and_rows(store):
    only = store.select([2])
    assert only.keys == ["layer_2"] and only.layers == [2] and len(only) == len(PROMPTS)
    assert mx.array_equal(store.get(2, rows=[21, 3, 3]),
                          mx.stack([store.get(2)[21], store.get(2)[3], store.get(2)[3]])).item()
    assert store.get("layer_0", rows=slice(4, 9)).shape == (5, 2, 64)  # across the first shard boundary
    assert mx.array_equal(store.get(0, rows=[-1]), store.get(0)[-1:]).item()
    with pytest.raises(IndexError, match="row numbers must be in"):
        store.get(0, rows=[len(PROMPTS)])
    assert store.row_shape(0) == (2, 64)
    with pytest.raises(ValueError, match=r"layer 5 is not in the activation store .* it holds 'layer_0', 'layer_2'"):
        store.select([5])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        next(store.batches(0))


def test_reader_errors(tmp_path, store):
    with pytest.raises(FileNotFoundError, match="no activation store"):
        ActivationStore(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in store.path.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "shard-000001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard 'shard-000001.safetensors' is listed"):
        ActivationStore(copy)


def test_reader_ignores_files_the_manifest_does_not_list(tmp_path, model):
    out = tmp_path / "s"
    batch_get_activations(model, PROMPTS[:6], layers=[1], out=out, shard_size=3, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]  # as if the run died before listing shard 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"unfinished: 1 of 2 shards written \(3 of 6 prompts missing\)"):
        ActivationStore(out)
    partial = ActivationStore(out, allow_partial=True)
    assert len(partial) == 3 and not partial.complete and "partial: 1/2 shards" in repr(partial)


# -- memory -----------------------------------------------------------------------------------------
def test_memory_is_bounded_by_one_shard(tmp_path, model):
    """Peak MLX memory of a collection into a store does not grow with the number of prompts."""
    def peak(n: int, out) -> int:
        prompts = [f"prompt {i} " + "ab" * 8 for i in range(n)]
        gc.collect()  # an earlier test's model in a reference cycle would otherwise count in the peak
        mx.clear_cache()
        mx.reset_peak_memory()
        held = mx.get_active_memory()  # arrays other tests keep alive count in the peak too
        if out is None:
            result = collect_activations(model, prompts, layers=[0, 1, 2, 3])
        else:
            result = collect_activations(model, prompts, layers=[0, 1, 2, 3], out=out, shard_size=16, progress=False)
        del result
        return mx.get_peak_memory() - held

    small, large = peak(32, tmp_path / "a"), peak(256, tmp_path / "b")
    in_memory = peak(256, None)
    assert large < 1.5 * small, (small, large)
    assert in_memory > 3 * large, (large, in_memory)  # the check would catch activations piling up


def test_auto_shard_size_gives_every_rank_windows():
    from mlxterp.store.writer import ROUNDS, Collection, _auto_size

    collection = Collection({}, None, None, bytes_per_prompt=1024)
    tokens = np.full(1000, 10)
    assert _auto_size(collection, tokens, 1) == 65536  # 64 MiB of 1 KiB rows: one shard alone
    assert _auto_size(collection, tokens, 2) == -(-1000 // (ROUNDS * 2))  # 4 windows per rank
    assert _auto_size(collection, tokens[:3], 8) == 1
