"""One writer per store: a second writer gets a clear error naming the first (its pid and host) instead of
deleting its shards; the lock is released on every exit path, and a writer killed with ``kill -9`` leaves
no lock that blocks the rerun resuming its store."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from mlxterp.store import StoreLockedError, files
from mlxterp.store.lock import LOCK_FILE, WriterLock
from tests.store import collect_child as child
from tests.store.test_resume import Crash, assert_same_store, listed, start_child


@pytest.fixture(scope="module")
def model():
    return child.model()


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    return child.collect(model, str(tmp_path_factory.mktemp("reference") / "positions"), "positions")


def test_a_second_writer_is_refused_naming_the_first_and_the_first_finishes_intact(tmp_path, model, reference):
    out = tmp_path / "store"
    first = start_child(out, "positions", "slow")  # a writer in another process, slowed down
    deadline = time.monotonic() + 60
    while len(listed(out)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert first.poll() is None, first.communicate()[1][-2000:]
    with pytest.raises(StoreLockedError, match=rf"being written by another process \(pid {first.pid} on host "
                                               rf"{socket.gethostname()}, writing since "):
        child.collect(model, str(out), "positions")
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert_same_store(child.collect(model, str(out), "positions"), reference)  # the first wrote everything


def test_the_lock_is_released_when_the_writer_raises(tmp_path, model, reference, monkeypatch):
    out = tmp_path / "store"
    real_commit = files.commit
    calls = []

    def crashing_commit(tmp, path):
        calls.append(path.name)
        if len(calls) == 4:
            raise Crash
        real_commit(tmp, path)

    monkeypatch.setattr(files, "commit", crashing_commit)
    with pytest.raises(Crash):
        child.collect(model, str(out), "positions")
    monkeypatch.setattr(files, "commit", real_commit)
    with WriterLock(out):  # free again
        pass
    assert_same_store(child.collect(model, str(out), "positions"), reference)


def test_a_writer_killed_with_kill_9_leaves_no_lock_that_blocks_the_resume(tmp_path, model, reference):
    out = tmp_path / "store"
    proc = start_child(out, "positions", "shard-renamed", n=3)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    held = json.loads((out / LOCK_FILE).read_text())
    assert held["pid"] == proc.pid  # the file still names the dead writer: only the OS lock counts
    assert_same_store(child.collect(model, str(out), "positions"), reference)


def test_a_lock_held_in_this_process_also_refuses_a_writer(tmp_path, model):
    out = tmp_path / "store"
    out.mkdir()
    with WriterLock(out, ranks=2):
        with pytest.raises(StoreLockedError, match=rf"pid {os.getpid()} on host .*, rank 0 of 2 ranks"):
            child.collect(model, str(out), "positions")
    assert not list(out.glob("shard-*")) and not (out / "manifest.json").exists()
