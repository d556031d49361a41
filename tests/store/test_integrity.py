"""The store does not trust its files blindly: a lost manifest is rebuilt from the shards' own descriptions
(a rerun continues instead of deleting every shard), and the reader (and a resumed run) checks each listed
shard's window, size, tensors and prompt hashes, so exchanged, truncated, foreign or twice-listed shards
are errors naming the file (the rerun collects them again) instead of wrong rows."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import batch_get_activations
from mlxterp.store import ActivationStore, StoreIntegrityError, StoreMismatchError, files
from tests.store import collect_child as child
from tests.store.test_resume import assert_same_store


@pytest.fixture(scope="module")
def model():
    return child.model()


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    return {kind: child.collect(model, str(root / kind), kind) for kind in ("positions", "tokens")}


def copy_of(store: ActivationStore, tmp_path, name: str = "copy"):
    out = tmp_path / name
    shutil.copytree(store.path, out)
    return out


def manifest_of(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def write_manifest(out, manifest: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest))


def shard(out, w: int):
    return out / f"shard-{w:06d}.safetensors"


# -- a lost manifest --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["positions", "tokens"])
def test_a_lost_manifest_is_rebuilt_from_the_shards_and_nothing_is_computed_again(tmp_path, model, reference, kind,
                                                                                 monkeypatch):
    out = copy_of(reference[kind], tmp_path)
    listed = manifest_of(out)
    (out / "manifest.json").unlink()
    written = []
    real_commit = files.commit
    monkeypatch.setattr(files, "commit", lambda tmp, path: (written.append(path.name), real_commit(tmp, path)))
    store = child.collect(model, str(out), kind)
    assert written == ["manifest.json"]  # no shard computed again: only the rebuilt manifest written
    assert manifest_of(out)["shards"] == listed["shards"]
    assert_same_store(store, reference[kind])


def test_a_lost_manifest_of_an_unfinished_store_is_rebuilt_and_the_rest_collected(tmp_path, model, reference,
                                                                                   monkeypatch):
    out = copy_of(reference["positions"], tmp_path)
    for w in (1, 4, 5):  # as if the run had been killed: some windows never written
        shard(out, w).unlink()
    (out / "manifest.json").unlink()
    written = []
    real_commit = files.commit
    monkeypatch.setattr(files, "commit", lambda tmp, path: (written.append(path.name), real_commit(tmp, path)))
    assert_same_store(child.collect(model, str(out), "positions"), reference["positions"])
    assert sorted({n for n in written if n.startswith("shard")}) == [shard(out, w).name for w in (1, 4, 5)]


def test_rebuilding_refuses_a_rerun_with_other_settings_and_deletes_nothing(tmp_path, model, reference):
    out = copy_of(reference["positions"], tmp_path)
    (out / "manifest.json").unlink()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(StoreMismatchError, match=r"layers: the store has \[0, 2, 3\], this run \[1\]"):
        batch_get_activations(model, child.PROMPTS, layers=[1], positions=child.POSITIONS, out=out,
                              shard_size=child.SHARD_SIZE, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_lost_manifest_with_shards_of_two_collections_is_an_error(tmp_path, model, reference):
    out = copy_of(reference["positions"], tmp_path)
    (out / "manifest.json").unlink()
    shutil.copy(shard(reference["tokens"].path, 2), shard(out, 2))
    with pytest.raises(StoreIntegrityError, match="belong to different collections"):
        child.collect(model, str(out), "positions")


# -- the reader's checks ----------------------------------------------------------------------------------
def exchange(out, a: int, b: int) -> None:
    """Swap two shard files and list each under its new size, as a careless copy would leave them."""
    tmp = out / "swap"
    shard(out, a).rename(tmp)
    shard(out, b).rename(shard(out, a))
    tmp.rename(shard(out, b))
    manifest = manifest_of(out)
    for e in manifest["shards"]:
        e["bytes"] = (out / e["file"]).stat().st_size
    write_manifest(out, manifest)


def test_exchanged_shards_are_refused(tmp_path, reference):
    out = copy_of(reference["positions"], tmp_path)
    exchange(out, 0, 1)
    with pytest.raises(StoreIntegrityError, match=r"shard 'shard-000000.safetensors' was written for window 1 .*"
                                                  r"exchanged or renamed"):
        ActivationStore(out)


def test_a_truncated_shard_is_refused(tmp_path, reference):
    out = copy_of(reference["positions"], tmp_path)
    data = shard(out, 3).read_bytes()
    shard(out, 3).write_bytes(data[:-100])
    with pytest.raises(StoreIntegrityError, match=r"shard-000003.safetensors' has \d+ bytes, the manifest lists"):
        ActivationStore(out)
    manifest = manifest_of(out)  # also listed under its new size: its tensors no longer fit in the file
    manifest["shards"][3]["bytes"] = len(data) - 100
    write_manifest(out, manifest)
    with pytest.raises(StoreIntegrityError, match="shard-000003.safetensors' is truncated"):
        ActivationStore(out)


def test_a_window_listed_twice_is_refused(tmp_path, reference):
    out = copy_of(reference["positions"], tmp_path)
    manifest = manifest_of(out)
    manifest["shards"].insert(2, dict(manifest["shards"][2]))
    write_manifest(out, manifest)
    with pytest.raises(StoreIntegrityError, match="window 2 is listed twice"):
        ActivationStore(out)


def test_a_shard_of_other_prompts_is_refused(tmp_path, model, reference):
    other = tmp_path / "other"
    prompts = [p + "?" for p in child.PROMPTS]  # same lengths of windows and rows: only the prompts differ
    batch_get_activations(model, prompts, layers=child.LAYERS, positions=child.POSITIONS, batch_size=child.BATCH_SIZE,
                          out=other, shard_size=child.SHARD_SIZE, progress=False)
    out = copy_of(reference["positions"], tmp_path)
    shutil.copy(shard(other, 4), shard(out, 4))
    with pytest.raises(StoreIntegrityError, match="shard-000004.safetensors' holds the activations of other prompts"):
        ActivationStore(out)


@pytest.mark.parametrize("damage", ["exchange", "truncate", "twice", "foreign"])
def test_a_resumed_run_collects_untrusted_shards_again(tmp_path, model, reference, damage):
    out = copy_of(reference["tokens"], tmp_path)
    if damage == "exchange":
        exchange(out, 1, 2)
    elif damage == "truncate":
        shard(out, 5).write_bytes(shard(out, 5).read_bytes()[:-8])
    elif damage == "twice":
        manifest = manifest_of(out)
        manifest["shards"].append(dict(manifest["shards"][0]))
        write_manifest(out, manifest)
    else:
        shutil.copy(shard(reference["positions"].path, 3), shard(out, 3))
    assert_same_store(child.collect(model, str(out), "tokens"), reference["tokens"])


def test_rows_must_be_integers(reference):
    store = reference["positions"]
    for rows in ([1.5], np.array([0.0, 2.0]), [True, False]):
        with pytest.raises(TypeError, match="rows must be integer row numbers"):
            store.get(0, rows=rows)
    assert mx.array_equal(store.get(0, rows=np.array([2, 0], dtype=np.int32)), store.get(0)[mx.array([2, 0])]).item()


# -- a damaged manifest -----------------------------------------------------------------------------------
def test_a_manifest_missing_keys_is_an_error_naming_the_file_and_the_keys(tmp_path, reference):
    out = copy_of(reference["positions"], tmp_path)
    manifest = manifest_of(out)
    del manifest["row_shapes"], manifest["shard_size"]
    write_manifest(out, manifest)
    with pytest.raises(ValueError, match=r"manifest '.*manifest.json' is missing the keys row_shapes, shard_size"):
        ActivationStore(out)
    manifest = {**manifest_of(reference["positions"].path)}
    del manifest["shards"][1]["bytes"]
    write_manifest(out, manifest)
    with pytest.raises(ValueError, match="lists a shard without bytes"):
        ActivationStore(out)
