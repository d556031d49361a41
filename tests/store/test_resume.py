"""An interrupted collection, rerun, gives exactly the uninterrupted store: every prompt once, the same bits.

A real ``kill -9`` (SIGKILL) of a subprocess: from outside at a random moment once shards are being
written, and from inside at the worst moments (a shard under its temporary name; a shard renamed but not
yet listed; the new manifest under its temporary name). The same moments are also hit in-process by an
exception, which leaves the same files behind (the writer has no clean-up handler) and is fast enough to
cover both kinds of store.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.store import ActivationStore, files
from mlxterp.store.lock import LOCK_FILE
from mlxterp.store.manifest import prompt_hashes
from tests.store import collect_child as child

REPO = Path(__file__).resolve().parents[2]
WINDOWS = -(-len(child.PROMPTS) // child.SHARD_SIZE)


class Crash(BaseException):
    """Stands for the process dying (not an Exception, so nothing on the way catches it)."""


@pytest.fixture(scope="module")
def model():
    return child.model()


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """The uninterrupted stores of both kinds."""
    root = tmp_path_factory.mktemp("reference")
    return {kind: child.collect(model, str(root / kind), kind) for kind in ("positions", "tokens")}


def start_child(out: Path, kind: str, stop_at: str, n: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.store.collect_child", str(out), kind, stop_at, str(n)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listed(out: Path) -> list:
    path = out / "manifest.json"
    return json.loads(path.read_text())["shards"] if path.is_file() else []


def assert_same_store(got: ActivationStore, want: ActivationStore) -> None:
    """Same rows bit for bit, every prompt exactly once and in order, the same shards; no leftovers."""
    assert got.complete and got.keys == want.keys
    assert [e["window"] for e in got.manifest["shards"]] == list(range(WINDOWS))
    np.testing.assert_array_equal(got.prompt_hashes(), prompt_hashes(child.PROMPTS))
    np.testing.assert_array_equal(got.prompt_index(), want.prompt_index())
    for key in want.keys:
        a, b = got.get(key), want.get(key)
        assert a.shape == b.shape and a.dtype == b.dtype
        assert mx.array_equal(a, b).item(), key
    names = sorted(p.name for p in got.path.iterdir())
    assert names == sorted(["manifest.json", LOCK_FILE] + [e["file"] for e in got.manifest["shards"]])


def test_kill_9_from_outside_then_rerun_gives_the_uninterrupted_result(tmp_path, reference):
    out = tmp_path / "store"
    proc = start_child(out, "positions", "slow")
    deadline = time.monotonic() + 60
    while len(listed(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.03))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err[-2000:]}"
    assert 2 <= len(listed(out)) < WINDOWS  # killed mid-run: some shards listed, not all
    with pytest.raises(ValueError, match="unfinished"):
        ActivationStore(out)
    rerun = start_child(out, "positions", "none")  # the same command again
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err[-2000:]
    assert_same_store(ActivationStore(out), reference["positions"])


def test_kill_9_of_a_shard_renamed_but_not_listed(tmp_path, model, reference):
    out = tmp_path / "store"
    proc = start_child(out, "positions", "shard-renamed", n=3)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert len(listed(out)) == 2 and (out / "shard-000002.safetensors").is_file()  # complete, but unlisted
    partial = ActivationStore(out, allow_partial=True)
    assert len(partial) == 2 * child.SHARD_SIZE  # the reader takes only what the manifest lists
    assert_same_store(child.collect(model, str(out), "positions"), reference["positions"])


@pytest.mark.parametrize("kind", ["positions", "tokens"])
@pytest.mark.parametrize("stop_at, n, leftover", [
    ("shard-tmp", 1, ".shard-000000.tmp."),
    ("shard-tmp", 4, ".shard-000003.tmp."),
    ("shard-renamed", 5, "shard-000004.safetensors"),
    ("manifest-tmp", 3, ".manifest.tmp."),
])
def test_crash_at_each_commit_step_then_rerun(tmp_path, model, reference, kind, stop_at, n, leftover):
    out = tmp_path / "store"
    real_commit = files.commit
    calls = {"count": 0}

    def crashing_commit(tmp, path):
        shard = path.suffix == ".safetensors"
        hit = shard if stop_at.startswith("shard") else not shard
        calls["count"] += hit
        if hit and calls["count"] == n and stop_at != "shard-renamed":
            raise Crash
        real_commit(tmp, path)
        if hit and calls["count"] == n:
            raise Crash

    files.commit = crashing_commit
    try:
        with pytest.raises(Crash):
            child.collect(model, str(out), kind)
    finally:
        files.commit = real_commit
    assert any(p.name.startswith(leftover) for p in out.iterdir()), sorted(p.name for p in out.iterdir())
    done = listed(out)
    assert len(done) < WINDOWS
    if done:
        partial = ActivationStore(out, allow_partial=True)
        assert partial.n_prompts == sum(e["stop"] - e["start"] for e in done)
    assert_same_store(child.collect(model, str(out), kind), reference[kind])


def test_rerun_of_a_finished_store_computes_nothing(tmp_path, model, reference, monkeypatch):
    out = tmp_path / "store"
    child.collect(model, str(out), "positions")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK_FILE}
    monkeypatch.setattr(files, "commit", lambda *a: pytest.fail("a finished store was written again"))
    store = child.collect(model, str(out), "positions")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK_FILE} == before
    assert_same_store(store, reference["positions"])


def test_store_files_are_flushed_before_rename(tmp_path, monkeypatch):
    """The commit order that makes a crash safe: fsync the file, rename, fsync the folder."""
    events = []
    monkeypatch.setattr(files, "fsync_path", lambda p: events.append(("fsync", Path(p).name)))
    real_replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("rename", Path(b).name)),
                                                          real_replace(a, b)))
    files.write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert events == [("fsync", ".m.tmp.%d.json" % os.getpid()), ("rename", "m.json"), ("fsync", tmp_path.name)]
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
