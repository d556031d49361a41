"""A collection into an activation store, run as a subprocess by the resume tests; it can SIGKILL itself.

``python -m tests.store.collect_child OUT KIND STOP_AT N``: collect :data:`PROMPTS` into ``OUT`` (``KIND``
``positions``: ``batch_get_activations``; ``tokens``: ``collect_activations``), killing this process with
SIGKILL (``kill -9``) at the ``N``-th time it reaches ``STOP_AT``:

- ``shard-tmp``: a shard is written under its temporary name, not yet renamed;
- ``shard-renamed``: a shard is renamed to its final name, the manifest does not list it yet;
- ``manifest-tmp``: the new manifest is written under its temporary name, not yet renamed;
- ``slow``: never; every file commit sleeps 30 ms so that the parent can kill the run from outside;
- ``none``: never.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from mlxterp import InterpretableModel
from mlxterp.activations import batch_get_activations, collect_activations
from mlxterp.store import files
from tests.models import CharTokenizer, tiny_llama_module

PROMPTS = [f"prompt {i}: " + "abcdefghij"[: i % 11] * (1 + i % 3) for i in range(60)]
LAYERS = [0, 2, 3]
POSITIONS = [0, -1]
MODULES = ["layers.1", "layers.3.mlp"]
SHARD_SIZE = 7
BATCH_SIZE = 4


def model() -> InterpretableModel:
    return InterpretableModel(tiny_llama_module(seed=3), tokenizer=CharTokenizer())


def collect(m: InterpretableModel, out: str, kind: str, **kwargs):
    """The collection every run of the resume tests makes (the same call, uninterrupted or not)."""
    if kind == "positions":
        return batch_get_activations(m, PROMPTS, layers=LAYERS, positions=POSITIONS, batch_size=BATCH_SIZE,
                                     out=out, shard_size=SHARD_SIZE, progress=False, **kwargs)
    return collect_activations(m, PROMPTS, layers=MODULES, batch_size=BATCH_SIZE, out=out, shard_size=SHARD_SIZE,
                               progress=False, **kwargs)


def install_stop(stop_at: str, n: int) -> None:
    """Patch the store's commit step so the process dies (or slows down) at ``stop_at``."""
    real_commit = files.commit
    seen = {"count": 0}

    def commit(tmp, path):
        shard = path.suffix == ".safetensors"
        if stop_at == "slow":
            time.sleep(0.03)
        if (stop_at == "shard-tmp" and shard) or (stop_at == "manifest-tmp" and not shard):
            seen["count"] += 1
            if seen["count"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        real_commit(tmp, path)
        if stop_at == "shard-renamed" and shard:
            seen["count"] += 1
            if seen["count"] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    files.commit = commit


if __name__ == "__main__":
    out, kind, stop_at, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    install_stop(stop_at, n)
    collect(model(), out, kind)
