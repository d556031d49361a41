"""One writer per store: an exclusive OS lock (``fcntl.flock``) on the store's ``.writer.lock`` file.

The writer takes the lock before it reads the manifest and holds it until it returns or raises; a second
writer of the same folder gets :class:`StoreLockedError` naming the holder (its pid, host and start time,
which the holder writes into the lock file) instead of deleting the first one's shards at start-up. The
OS releases the lock when the holder's process ends, however it ends (``kill -9`` included), so a dead
writer's lock never blocks the rerun that resumes its store; the file itself stays (removing it would let
two writers lock two different files of the same name).

On ``mx.distributed``, the ranks writing one store are one writer: rank 0 holds the lock for the group
(the other ranks write only their own shards, and start only once rank 0 has the lock). The lock guards
writers on one host and, where the file system supports ``flock`` across hosts (Linux NFS v4 emulates it
with byte-range locks), across hosts.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Optional

LOCK_FILE = ".writer.lock"


class StoreLockedError(RuntimeError):
    """Another process is writing this activation store."""


class WriterLock:
    """The exclusive lock of the store in ``folder`` (see the module docstring); ``ranks``: the number of
    processes this writer is (for the holder's description)."""

    def __init__(self, folder: Path, ranks: int = 1):
        self.path = Path(folder) / LOCK_FILE
        self.ranks = ranks
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreLockedError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise StoreLockedError(f"the activation store {str(self.path.parent)!r} is being written by another "
                                   f"process ({_describe(holder)}); wait for it to finish, or stop it and rerun "
                                   "to resume (a writer that has died holds no lock)") from None
        self._fd = fd
        held = {"pid": os.getpid(), "host": socket.gethostname(), "ranks": self.ranks,
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(held).encode(), 0)

    def release(self) -> None:
        """Let the lock go (closing the file releases it); a no-op when it is not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        ranks = f", rank 0 of {info['ranks']} ranks" if info.get("ranks", 1) > 1 else ""
        return f"pid {info['pid']} on host {info['host']}{ranks}, writing since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "it has not recorded its pid yet"
