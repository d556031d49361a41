"""Training from an activation store: every row once per epoch in a seeded order across shards, memory
bounded by the shards a batch touches, sites matched to the store's keys, and training on a store equal to
training on the same rows in memory when the order is the same."""

from __future__ import annotations

import numpy as np
import pytest

from mlxterp import SAE, ActivationStore, InterpretableModel, Transcoder, batch_get_activations, collect_activations, train
from mlxterp.dictionaries.learner import Comm
from mlxterp.dictionaries.sources import StoreSource
from tests.models import CharTokenizer, tiny_llama_module

PROMPTS = [f"store prompt {i}: " + "xyz"[: i % 4] * (1 + i % 3) for i in range(30)]


@pytest.fixture(scope="module")
def model():
    return InterpretableModel(tiny_llama_module(seed=4), tokenizer=CharTokenizer())


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "acts"
    return collect_activations(model, PROMPTS, layers=["layers.1", "layers.2.mlp", "layers.2.post_attention_layernorm"],
                               out=str(out), shard_size=4, batch_size=4, progress=False)


def rows_of(store, key):
    return np.array(store.get(key, dtype="float32"))


def test_every_row_once_per_epoch_in_a_seeded_order(store):
    source = StoreSource(store, {"h": "layers.1"})
    n, batch = source.rows, 32
    stream = source.batches(batch, 7, Comm(None))
    seen = np.concatenate([np.array(next(stream)[0]["h"]) for _ in range(-(-2 * n // batch))])
    all_rows = rows_of(store, "layers.1")
    first, second = seen[:n], seen[n:2 * n]
    for epoch in (first, second):
        np.testing.assert_array_equal(np.sort(epoch, axis=0), np.sort(all_rows, axis=0))
    assert not np.array_equal(first, second) and not np.array_equal(first, all_rows)
    again = StoreSource(store, {"h": "layers.1"}).batches(batch, 7, Comm(None))
    np.testing.assert_array_equal(np.array(next(again)[0]["h"]), seen[:batch])
    other = StoreSource(store, {"h": "layers.1"}).batches(batch, 8, Comm(None))
    assert not np.array_equal(np.array(next(other)[0]["h"]), seen[:batch])
    assert len(source._cache) <= 2  # at most the two shards a batch straddles are held


def test_a_cursor_restarts_the_stream_at_the_next_batch(store):
    stream = StoreSource(store, {"h": "layers.1"}).batches(16, 3, Comm(None))
    items = [next(stream) for _ in range(5)]
    resumed = StoreSource(store, {"h": "layers.1"}).batches(16, 3, Comm(None), items[2][1])
    np.testing.assert_array_equal(np.array(next(resumed)[0]["h"]), np.array(items[3][0]["h"]))


def test_rank_shares_partition_each_batch(store):
    class Half(Comm):
        def __init__(self, rank):
            super().__init__(None)
            self.size, self.rank = 2, rank

    whole = next(StoreSource(store, {"h": "layers.1"}).batches(16, 1, Comm(None)))[0]["h"]
    parts = [next(StoreSource(store, {"h": "layers.1"}).batches(16, 1, Half(r)))[0]["h"] for r in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([np.array(p) for p in parts]), np.array(whole))


def test_sites_are_matched_to_store_keys(store):
    sae = SAE.create("topk", d_sae=32, k=4, site="layers.1.resid_post")  # the store's "layers.1"
    tc = Transcoder.create("relu", d_sae=32, site_in="layers.2.post_attention_layernorm", site_out="layers.2.mlp")
    result = train([sae, tc], store, tokens=64, batch_size=16, lr=1e-3, progress=False)
    assert sae.d_in == 64 and (tc.d_in, tc.d_out) == (64, 64) and result.steps == 4
    with pytest.raises(ValueError, match=r"'layers.3.resid_pre' is not in the activation store .* holds 'layers.1'"):
        train(SAE.create("topk", d_sae=32, k=4, site="layers.3.resid_pre"), store, tokens=64, batch_size=16)


def test_store_training_equals_memory_training_on_the_same_order(store, tmp_path):
    """The store source's first epoch, fed in memory in the same order, gives the same weights."""
    source = StoreSource(store, {"h": "layers.1"})
    stream = source.batches(16, 0, Comm(None))
    rows = np.concatenate([np.array(next(stream)[0]["h"]) for _ in range(4)])
    a = SAE.create("topk", d_sae=32, k=4, site="layers.1", seed=1)
    b = SAE.create("topk", d_sae=32, k=4, site="layers.1", seed=1)
    train(a, ActivationStore(store.path), tokens=64, batch_size=16, lr=1e-3, progress=False)
    from mlxterp.dictionaries.objective import DictionaryObjective
    from mlxterp.dictionaries.trainer import FitSettings, fit
    from tests.dictionaries.test_trainer import ListSource

    b.bind(64)
    fit([DictionaryObjective(b, "h", "h", 16)], ListSource([{"h": rows[i * 16:(i + 1) * 16]} for i in range(4)]),
        FitSettings(steps=4, batch_size=16, lr=1e-3), progress=False)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_array_equal(np.array(a[name]), np.array(b[name]))


def test_a_single_position_store_trains_and_a_multi_position_one_is_refused(model, tmp_path):
    one = batch_get_activations(model, PROMPTS, layers=[2], positions=-1, out=str(tmp_path / "one"), progress=False)
    sae = SAE.create("relu", d_sae=16, site="layers.2")
    train(sae, one, tokens=16, batch_size=8, progress=False)
    assert sae.d_in == 64
    two = batch_get_activations(model, PROMPTS, layers=[2], positions=[0, -1], out=str(tmp_path / "two"), progress=False)
    with pytest.raises(ValueError, match=r"rows of shape \(2, 64\)"):
        train(SAE.create("relu", d_sae=16, site="layers.2"), two, tokens=16, batch_size=8)
